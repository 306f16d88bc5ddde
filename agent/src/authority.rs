//! The signing CA and SVID minting.
//!
//! The `dev` upstream's CA is generated at start (or loaded from PEM files); the `kms`
//! upstream hands over a Private CA's material through the same [`Authority`].
//!
//! Every X.509-SVID follows the SPIFFE X.509-SVID spec
//! (<https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>): exactly one URI
//! SAN, basicConstraints present with cA=false, keyUsage critical with
//! digitalSignature (and keyEncipherment only for RSA keys, which are not minted here),
//! EKU serverAuth + clientAuth, a random positive 128-bit serial. Each minted SVID is
//! re-parsed by the `spiffe` crate before it is published.

use std::time::{Duration, SystemTime};

use enclaveid_attestor::svid::{self, SvidError, SvidPolicy};
use enclaveid_attestor::{Policy, hex};
use enclaveid_checks::certs;
use enclaveid_checks::keys::{KeyError, SigningKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::{CaFiles, ConfigError, Entry};
use crate::enclave::Enclave;

/// How long a generated development CA is valid.
pub(crate) const DEV_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far a certificate's notBefore is set in the past, for peers whose clocks lag.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60);

/// Why an SVID (or the development CA) could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The CA's validity has ended.
    #[error("the CA expired at {}; no SVID can be issued", humantime::format_rfc3339(*not_after))]
    CaExpired {
        /// The CA's notAfter.
        not_after: SystemTime,
    },
    /// A key could not be generated or serialized.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A SAN rcgen refuses.
    #[error("{what} {value:?} cannot go into a certificate")]
    San {
        /// `URI SAN` or `DNS name`.
        what: &'static str,
        /// The value.
        value: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// Signing failed.
    #[error("signing {what}")]
    Sign {
        /// What was being signed.
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The minted certificate is not an X.509-SVID the `spiffe` crate accepts.
    #[error("the minted SVID of {spiffe_id} does not parse as an X.509-SVID")]
    NotSvid {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// The `spiffe` crate's reason.
        #[source]
        source: spiffe::X509SvidError,
    },
    /// The minted certificate names another SPIFFE ID.
    #[error("the minted SVID names {found} instead of {spiffe_id}")]
    WrongId {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// What the certificate names.
        found: SpiffeId,
    },
    /// A CA certificate handed over by the upstream cannot sign (rcgen refuses it).
    #[error("the CA certificate cannot issue certificates")]
    Issuer(#[source] rcgen::Error),
    /// A CA certificate handed over by the upstream does not parse.
    #[error("the CA certificate")]
    Certificate(#[source] certs::CertificateError),
    /// An entry with `attested = true`, and no attestor to make its document.
    #[error("the SVID of {spiffe_id} must be attested and this signer has no enclave attestor")]
    NoAttestor {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
    },
    /// The enclave's attestor failed to make the SVID's document.
    #[error("attesting the SVID of {spiffe_id}")]
    Attestation {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// The attestor's reason.
        #[source]
        source: enclaveid_attestor::Error,
    },
    /// The attested SVID does not verify as a relying party would verify it.
    #[error("the attested SVID of {spiffe_id} does not verify")]
    Attested {
        /// The entry's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// The verifier's reason.
        #[source]
        source: SvidError,
    },
}

/// A CA that signs SVIDs of one trust domain.
pub(crate) struct Authority {
    issuer: Issuer<'static, SigningKey>,
    /// Certificates sent after the leaf: the CA's own certificate when it is not a root,
    /// then any intermediates above it.
    chain: Vec<CertificateDer<'static>>,
    /// The trust bundle: root certificates.
    bundle: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    trust_domain: TrustDomain,
}

/// A freshly minted X.509-SVID.
pub(crate) struct Minted {
    /// The DER chain, leaf first, concatenated.
    pub cert_chain_der: Vec<u8>,
    /// The PKCS#8 DER private key.
    pub private_key_der: Zeroizing<Vec<u8>>,
    /// The leaf's serial number, for logs.
    pub serial: String,
    /// When the SVID was issued (not its backdated notBefore).
    pub issued_at: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

// === impl Authority ===

impl Authority {
    /// Generates a self-signed development root for `trust_domain`, valid from now for
    /// [`DEV_CA_VALIDITY`].
    pub(crate) fn generate_dev(trust_domain: &TrustDomain) -> Result<Self, MintError> {
        let key = SigningKey::generate_p256()?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "EnclaveID");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("EnclaveID development CA for {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri(&trust_domain.id_string())?];
        params.serial_number = Some(random_serial());
        let not_before = crate::time::earlier_wall(now, BACKDATE);
        let not_after = crate::time::later_wall(now, DEV_CA_VALIDITY);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let cert = params.self_signed(&key).map_err(|source| MintError::Sign {
            what: "the development CA".into(),
            source,
        })?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
            bundle: vec![cert.der().clone()],
            not_before: truncate_to_seconds(not_before),
            not_after: truncate_to_seconds(not_after),
            trust_domain: trust_domain.clone(),
        })
    }

    /// Loads a CA from PEM files: the CA certificate (optionally followed by the
    /// intermediates above it), its PKCS#8 key, and the trust bundle when the CA is not
    /// itself a root.
    pub(crate) fn load(files: &CaFiles, trust_domain: &TrustDomain) -> Result<Self, ConfigError> {
        let certs = crate::config::read_certs("upstream.cert_path", &files.cert_path)?;
        let key_pem = Zeroizing::new(crate::config::read_file(
            "upstream.key_path",
            &files.key_path,
        )?);
        let key_der = enclaveid_checks::secret_pem::decode(&key_pem)
            .filter(|p| p.label == "PRIVATE KEY")
            .map(|p| p.der)
            .ok_or_else(|| ConfigError::NotPkcs8 {
                key: "upstream.key_path",
                path: files.key_path.clone(),
            })?;
        let key = SigningKey::from_pkcs8_der(&key_der, "upstream.key_path").map_err(|source| {
            ConfigError::Key {
                key: "upstream.key_path",
                path: files.key_path.clone(),
                source,
            }
        })?;

        let ca = &certs[0];
        let parsed = certs::parse(ca, "upstream.cert_path", 0).map_err(|source| {
            ConfigError::Certificates {
                key: "upstream.cert_path",
                path: files.cert_path.clone(),
                source,
            }
        })?;
        if !parsed.is_ca() {
            return Err(ConfigError::NotCa {
                path: files.cert_path.clone(),
            });
        }
        if parsed.public_key().raw != key.subject_public_key_info() {
            return Err(ConfigError::KeyMismatch {
                key_path: files.key_path.clone(),
                cert_path: files.cert_path.clone(),
            });
        }
        let self_signed = parsed.subject() == parsed.issuer();
        let bundle = match &files.bundle_path {
            Some(path) => crate::config::read_certs("upstream.bundle_path", path)?,
            None if self_signed => vec![ca.clone()],
            None => {
                return Err(ConfigError::BundleRequired {
                    path: files.cert_path.clone(),
                });
            }
        };
        let chain = if self_signed {
            Vec::new()
        } else {
            certs.clone()
        };
        Self::from_ca(ca.clone(), key, chain, bundle, trust_domain).map_err(|e| match e {
            MintError::Issuer(source) => ConfigError::Issuer {
                path: files.cert_path.clone(),
                source,
            },
            MintError::Certificate(source) => ConfigError::Certificates {
                key: "upstream.cert_path",
                path: files.cert_path.clone(),
                source,
            },
            other => ConfigError::Invalid {
                origin: "upstream".into(),
                key: "upstream.cert_path".into(),
                value: format!("{:?}", files.cert_path),
                reason: enclaveid_checks::Chain(&other).to_string(),
            },
        })
    }

    /// A CA from its certificate and key. `chain` is what follows an SVID: the CA's own
    /// certificate (unless it is a root) and the intermediates above it. No SVID outlives
    /// the earliest notAfter of the CA and `chain`.
    pub(crate) fn from_ca(
        ca: CertificateDer<'static>,
        key: SigningKey,
        chain: Vec<CertificateDer<'static>>,
        bundle: Vec<CertificateDer<'static>>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, MintError> {
        let mut not_before = SystemTime::UNIX_EPOCH;
        let mut not_after = None::<SystemTime>;
        let all: Vec<_> = std::iter::once(&ca).chain(&chain).cloned().collect();
        let der: Vec<u8> = all.iter().flat_map(|c| c.iter().copied()).collect();
        certs::split_der(&der, "the CA chain").map_err(MintError::Certificate)?;
        for cert in &all {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
                continue;
            };
            let validity = parsed.validity();
            let start = SystemTime::from(validity.not_before.to_datetime());
            let end = SystemTime::from(validity.not_after.to_datetime());
            if *cert == ca {
                not_before = start;
            }
            not_after = Some(not_after.map_or(end, |t| t.min(end)));
        }
        let issuer = Issuer::from_ca_cert_der(&ca, key).map_err(MintError::Issuer)?;
        Ok(Self {
            issuer,
            chain,
            bundle,
            not_before,
            not_after: not_after.unwrap_or(not_before),
            trust_domain: trust_domain.clone(),
        })
    }

    /// The trust bundle as concatenated DER, as the Workload API sends it.
    pub(crate) fn bundle_der(&self) -> Vec<u8> {
        self.bundle.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// The end of the CA's validity; no SVID outlives it.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Mints an X.509-SVID for `entry`, valid from `now` for the entry's TTL but never
    /// past the CA's own notAfter, and checks it with the `spiffe` crate's parser. An
    /// `attested` entry's SVID carries a fresh document from `enclave`
    /// ([`Authority::attest`]).
    pub(crate) fn mint(
        &self,
        entry: &Entry,
        now: SystemTime,
        enclave: Option<&Enclave>,
    ) -> Result<Minted, MintError> {
        // Certificates carry whole seconds; truncating first keeps `not_after` exact.
        let now = truncate_to_seconds(now);
        if now >= self.not_after {
            return Err(MintError::CaExpired {
                not_after: self.not_after,
            });
        }
        let key = SigningKey::generate_p256()?;
        let not_after = crate::time::later_wall(now, entry.ttl).min(self.not_after);
        let not_before = crate::time::earlier_wall(now, BACKDATE).max(self.not_before);

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "EnclaveID");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = std::iter::once(uri(&entry.spiffe_id.to_string()))
            .chain(entry.dns_names.iter().map(|name| {
                name.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| MintError::San {
                        what: "DNS name",
                        value: name.clone(),
                        source,
                    })
            }))
            .collect::<Result<_, _>>()?;
        let serial = random_serial();
        let serial_hex =
            hex(&serial.as_ref()[serial.as_ref().iter().take_while(|b| **b == 0).count()..]);
        params.serial_number = Some(serial);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.use_authority_key_identifier_extension = true;

        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| MintError::Sign {
                what: format!("the SVID of {}", entry.spiffe_id),
                source,
            })?;
        let mut cert_chain_der = if entry.attested {
            let enclave = enclave.ok_or_else(|| MintError::NoAttestor {
                spiffe_id: entry.spiffe_id.clone(),
            })?;
            self.attest(leaf.der(), &entry.spiffe_id, enclave, now)?
        } else {
            leaf.der().to_vec()
        };
        for cert in &self.chain {
            cert_chain_der.extend_from_slice(cert);
        }
        let private_key_der = key.to_pkcs8_der()?;

        // Verify before publishing: an SVID the `spiffe` crate refuses is never served.
        let parsed = spiffe::X509Svid::parse_from_der(&cert_chain_der, &private_key_der).map_err(
            |source| MintError::NotSvid {
                spiffe_id: entry.spiffe_id.clone(),
                source,
            },
        )?;
        if parsed.spiffe_id() != &entry.spiffe_id {
            return Err(MintError::WrongId {
                spiffe_id: entry.spiffe_id.clone(),
                found: parsed.spiffe_id().clone(),
            });
        }
        Ok(Minted {
            cert_chain_der,
            private_key_der,
            serial: serial_hex,
            issued_at: now,
            not_after,
        })
    }
}

impl Authority {
    /// The attested form of the freshly signed SVID `plain`: a document from `enclave`
    /// binding its key and serial, in the extension, the TBSCertificate signed again by
    /// this CA. Checked as a relying party checks it before it is returned.
    fn attest(
        &self,
        plain: &[u8],
        spiffe_id: &SpiffeId,
        enclave: &Enclave,
        now: SystemTime,
    ) -> Result<Vec<u8>, MintError> {
        let attested = |source| MintError::Attested {
            spiffe_id: spiffe_id.clone(),
            source,
        };
        let user_data = svid::user_data_for(plain).map_err(attested)?;
        let document =
            enclave
                .attest_user_data(user_data)
                .map_err(|source| MintError::Attestation {
                    spiffe_id: spiffe_id.clone(),
                    source,
                })?;
        let unsigned = svid::add_extension(plain, &document).map_err(attested)?;
        let signature =
            rcgen::SigningKey::sign(self.issuer.key(), unsigned.tbs()).map_err(|source| {
                MintError::Sign {
                    what: format!("the attested SVID of {spiffe_id}"),
                    source,
                }
            })?;
        let cert = unsigned.finish(&signature);
        let (verifier, allow_debug) = enclave.verifier();
        let policy = SvidPolicy {
            trust_domain: Some(self.trust_domain.to_string()),
            ..SvidPolicy::required(Policy {
                allow_debug,
                ..Policy::default()
            })
        };
        verifier
            .verify_attested_svid(&cert, &policy, now)
            .map_err(attested)?;
        Ok(cert)
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("bundle_len", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

fn uri(value: &str) -> Result<SanType, MintError> {
    value
        .to_owned()
        .try_into()
        .map(SanType::URI)
        .map_err(|source| MintError::San {
            what: "URI SAN",
            value: value.to_owned(),
            source,
        })
}

/// A random serial of 128 bits. rcgen writes it as a positive DER INTEGER (a leading
/// zero octet when the top bit is set: 17 octets at most, under RFC 5280's 20).
fn random_serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    SerialNumber::from_slice(&bytes)
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    use super::*;

    fn entry(ttl: Duration) -> Entry {
        Entry {
            spiffe_id: spiffe::SpiffeId::new("spiffe://example.org/gateway").unwrap(),
            selectors: vec![crate::selector::Selector::Uid(1)],
            dns_names: vec!["gateway.internal".into()],
            ttl,
            jwt_ttl: Duration::from_secs(300),
            hint: String::new(),
            attested: false,
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn a_minted_svid_follows_the_x509_svid_profile() {
        let ca = Authority::generate_dev(&td()).unwrap();
        let now = SystemTime::now();
        let minted = ca
            .mint(&entry(Duration::from_secs(600)), now, None)
            .unwrap();
        let (rest, cert) = x509_parser::parse_x509_certificate(&minted.cert_chain_der).unwrap();
        assert!(rest.is_empty(), "a dev root CA adds no intermediates");

        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().expect("keyUsage present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign() && !ku.value.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let uris: Vec<_> = san
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://example.org/gateway"]);
        assert!(
            san.general_names
                .contains(&GeneralName::DNSName("gateway.internal"))
        );

        assert!(cert.raw_serial()[0] & 0x80 == 0, "serial is positive");
        assert_eq!(hex(&cert.serial.to_bytes_be()), minted.serial);
        assert!(cert.serial.bits() > 96, "serial carries 128 random bits");
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            not_before < now_s && not_before >= now_s - 61,
            "backdated a little"
        );
        assert_eq!(not_after, now_s + 600);
        assert!(cert.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));

        let other = ca
            .mint(&entry(Duration::from_secs(600)), now, None)
            .unwrap();
        assert_ne!(other.serial, minted.serial, "serials are random");
    }

    #[test]
    fn an_svid_never_outlives_its_ca() {
        let ca = Authority::generate_dev(&td()).unwrap();
        let late = ca.not_after() - Duration::from_secs(30);
        let minted = ca
            .mint(&entry(Duration::from_secs(3600)), late, None)
            .unwrap();
        assert_eq!(minted.not_after, ca.not_after());
        let Err(error) = ca.mint(&entry(Duration::from_secs(3600)), ca.not_after(), None) else {
            panic!("minted past the CA's notAfter");
        };
        assert!(error.to_string().contains("CA expired"), "{error}");
    }

    #[test]
    fn a_loaded_ca_must_match_its_key_and_be_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, data).unwrap();
            path
        };
        // A CA made with rcgen's own key type: an independent producer of the files.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&key).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["leaf.test".to_owned()])
            .unwrap()
            .self_signed(&other_key)
            .unwrap();

        let files = CaFiles {
            cert_path: write("ca.pem", &ca_cert.pem()),
            key_path: write("ca.key", &key.serialize_pem()),
            bundle_path: None,
        };
        let ca = Authority::load(&files, &td()).unwrap();
        assert_eq!(ca.bundle_der(), ca_cert.der().to_vec());
        let minted = ca
            .mint(&entry(Duration::from_secs(60)), SystemTime::now(), None)
            .unwrap();
        assert!(!minted.cert_chain_der.is_empty());

        let wrong_key = CaFiles {
            key_path: write("other.key", &other_key.serialize_pem()),
            ..files.clone()
        };
        let error = Authority::load(&wrong_key, &td()).unwrap_err().to_string();
        assert!(error.contains("does not belong"), "{error}");

        let not_ca = CaFiles {
            cert_path: write("leaf.pem", &leaf.pem()),
            key_path: write("leaf.key", &other_key.serialize_pem()),
            bundle_path: None,
        };
        let error = Authority::load(&not_ca, &td()).unwrap_err().to_string();
        assert!(error.contains("not a CA"), "{error}");

        let garbage = CaFiles {
            cert_path: write("garbage.pem", "hello"),
            ..files
        };
        let error = Authority::load(&garbage, &td()).unwrap_err().to_string();
        assert!(error.contains("upstream.cert_path"), "{error}");
    }

    #[cfg(feature = "fake")]
    #[test]
    fn attested_svid_minted_by_the_agent_carries_a_bound_document_and_parses_as_an_svid() {
        use crate::config::{AttestorConfig, AttestorKind};
        let pcr0 = vec![0x5a; 48];
        let enclave = Enclave::open(&AttestorConfig {
            kind: AttestorKind::Fake(enclaveid_attestor::FakeConfig {
                pcrs: std::collections::BTreeMap::from([(0, pcr0.clone())]),
                ..enclaveid_attestor::FakeConfig::default()
            }),
            allow_debug: false,
        })
        .unwrap();
        let ca = Authority::generate_dev(&td()).unwrap();
        let attested = Entry {
            attested: true,
            ..entry(Duration::from_secs(600))
        };
        let now = SystemTime::now();
        let minted = ca.mint(&attested, now, Some(&enclave)).unwrap();
        let plain = ca
            .mint(&entry(Duration::from_secs(600)), now, None)
            .unwrap();
        let leaf = certs::split_der(&minted.cert_chain_der, "svid").unwrap()[0].clone();
        let (verifier, _) = enclave.verifier();
        let policy = SvidPolicy {
            trust_domain: Some("example.org".into()),
            ..SvidPolicy::required(Policy {
                pcrs: std::collections::BTreeMap::from([(0, vec![pcr0.clone()])]),
                ..Policy::default()
            })
        };
        let verified = verifier
            .verify_attested_svid(&leaf, &policy, now)
            .unwrap()
            .unwrap();
        assert_eq!(verified.document.pcrs[&0], pcr0);
        assert_eq!(verified.uris[0], "spiffe://example.org/gateway");
        // Still an X.509-SVID for the `spiffe` crate, chaining to the CA.
        let svid =
            spiffe::X509Svid::parse_from_der(&minted.cert_chain_der, &minted.private_key_der)
                .unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/gateway");
        let chain = [CertificateDer::from(leaf.to_vec())];
        enclaveid_checks::peer::verify_svid(
            &chain,
            &[CertificateDer::from(ca.bundle_der())],
            now,
            enclaveid_checks::peer::Role::Client,
        )
        .unwrap();
        assert!(minted.cert_chain_der.len() > plain.cert_chain_der.len() + 3000);

        // The plain SVID of the same entry carries no extension: required fails closed.
        let plain_leaf = certs::split_der(&plain.cert_chain_der, "svid").unwrap()[0].clone();
        assert!(matches!(
            verifier.verify_attested_svid(&plain_leaf, &policy, now),
            Err(SvidError::Missing)
        ));
        // An attested entry with no attestor is refused, not served plain.
        assert!(matches!(
            ca.mint(&attested, now, None),
            Err(MintError::NoAttestor { .. })
        ));
    }
}
