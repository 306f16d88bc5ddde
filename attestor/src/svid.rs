//! Attested X.509-SVIDs: an SVID that carries, in a non-critical extension, a Nitro
//! attestation document of the enclave holding its private key, bound to that key and to
//! the certificate's serial. A relying party checks it offline, from the certificate
//! alone, with [`verify_attested_svid`].
//!
//! The format (also in `docs/attested-svids.md`):
//!
//! - The extension's OID is [`ATTESTED_SVID_OID`], under a provisional private arc
//!   (`docs/attested-svids.md` says why not `2.25.<UUID>`: Go's X.509 parser, and so
//!   go-spiffe and spire-agent, refuse any certificate with an OID arc of 32 bits or
//!   more, even in a non-critical extension); it is never critical.
//! - Its `extnValue` is the DER of
//!   `EnclaveAttestation ::= SEQUENCE { version INTEGER (1), document OCTET STRING }`,
//!   `document` being the NSM attestation document exactly as NSM returned it
//!   (untagged COSE_Sign1, CBOR).
//! - The document's `user_data` is [`USER_DATA_PREFIX`] ‖ SHA-384 of the certificate's
//!   DER SubjectPublicKeyInfo ‖ the content octets of its serial number (as the DER
//!   INTEGER in the certificate holds them): see [`user_data_for`]. The prefix keeps a
//!   document made for another purpose from ever passing as an SVID's.
//!
//! What the extension proves is that, when the document was made, an enclave with these
//! PCRs asked for a document binding this public key. The enclave never lets that key
//! out, so a peer that also proved possession of the key (a TLS handshake does) is that
//! enclave. The certificate chain and the SPIFFE ID are checked by the TLS stack as for
//! any SVID; this module checks the attestation.

use std::time::SystemTime;

use aws_lc_rs::digest;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::der;
use crate::verify::hex;
use crate::{Error, MAX_FUTURE_SKEW, Policy, VerifiedDocument, Verifier, VerifyAt};

/// The extension's OID, dotted. Provisional: `1.3.6.1.4.1` (IANA Private Enterprise
/// Numbers) with 2147483647, the largest arc every parser checked accepts (Go's stops
/// at 2^31 - 1), which IANA's sequential assignment (about 65,000 numbers so far) will
/// not reach; it moves under EnclaveID's own PEN when one is assigned.
pub const ATTESTED_SVID_OID: &str = "1.3.6.1.4.1.2147483647.1.1";

/// The content octets of [`ATTESTED_SVID_OID`]'s DER encoding.
pub const ATTESTED_SVID_OID_DER: [u8; 12] = [
    0x2b, 0x06, 0x01, 0x04, 0x01, 0x87, 0xff, 0xff, 0xff, 0x7f, 0x01, 0x01,
];

/// The version of `EnclaveAttestation` written and read.
pub const EXTENSION_VERSION: u8 = 1;

/// What the document's `user_data` starts with.
pub const USER_DATA_PREFIX: &[u8] = b"enclaveid-attested-svid/1 ";

/// Why an attested SVID was refused (or could not be made).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The certificate is not DER X.509.
    #[error("the certificate does not parse as X.509")]
    Certificate(#[source] X509Error),
    /// The certificate's SPIFFE ID is not in the expected trust domain.
    #[error("the certificate names {found:?}; expected one SPIFFE ID of spiffe://{expected}")]
    TrustDomain {
        /// The expected trust domain.
        expected: String,
        /// The certificate's URI SANs.
        found: Vec<String>,
    },
    /// The certificate is not valid at the verification time.
    #[error(
        "the certificate is valid from {} to {}, not at {}",
        crate::rfc3339(*not_before),
        crate::rfc3339(*not_after),
        crate::rfc3339(*at)
    )]
    NotValidAt {
        /// Its notBefore.
        not_before: SystemTime,
        /// Its notAfter.
        not_after: SystemTime,
        /// The verification time.
        at: SystemTime,
    },
    /// No attestation extension, and the policy requires one.
    #[error(
        "the certificate carries no attestation extension ({ATTESTED_SVID_OID}), and one is required"
    )]
    Missing,
    /// More than one attestation extension.
    #[error("the certificate carries {0} attestation extensions; at most one is accepted")]
    Duplicate(usize),
    /// The attestation extension is marked critical.
    #[error("the attestation extension is marked critical; it is always non-critical")]
    Critical,
    /// The extension's value is not `EnclaveAttestation` (truncated, wrong tags, trailing bytes).
    #[error("the attestation extension is malformed: {0}")]
    Malformed(&'static str),
    /// An `EnclaveAttestation` version this verifier does not know.
    #[error(
        "the attestation extension has version {0}; this verifier reads version {EXTENSION_VERSION}"
    )]
    Version(u64),
    /// The document is refused: chain, signature, debug mode, PCRs, age.
    #[error("the attestation document in the certificate is refused")]
    Document(#[source] Error),
    /// The document binds another key or serial than this certificate's.
    #[error(
        "the attestation document is bound to another certificate: its user_data is {got}, this certificate's binding is {expected}"
    )]
    NotBound {
        /// The document's `user_data`, hex.
        got: String,
        /// [`user_data_for`] this certificate, hex.
        expected: String,
    },
    /// The document was made outside the certificate's validity.
    #[error(
        "the attestation document was made at {}, outside the certificate's validity ({} to {})",
        crate::rfc3339(*timestamp),
        crate::rfc3339(*not_before),
        crate::rfc3339(*not_after)
    )]
    Timestamp {
        /// The document's timestamp.
        timestamp: SystemTime,
        /// The certificate's notBefore.
        not_before: SystemTime,
        /// The certificate's notAfter.
        not_after: SystemTime,
    },
}

/// What an attested SVID must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidPolicy {
    /// What the document must satisfy: PCR allowlists, debug mode, maximum age (relative
    /// to the verification time). Its `nonce`, `public_key` and `user_data` are normally
    /// left empty: the binding to the certificate is checked regardless.
    pub document: Policy,
    /// Refuse a certificate without the extension (fail closed). When `false`, such a
    /// certificate verifies as `Ok(None)`.
    pub required: bool,
    /// The trust domain the certificate's SPIFFE ID must belong to, when set.
    pub trust_domain: Option<String>,
}

impl SvidPolicy {
    /// The extension is required and the document must satisfy `document`.
    pub fn required(document: Policy) -> Self {
        Self {
            document,
            required: true,
            trust_domain: None,
        }
    }
}

/// An attested SVID that checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedSvid {
    /// The certificate's URI SANs (one SPIFFE ID in an X.509-SVID).
    pub uris: Vec<String>,
    /// The document, verified.
    pub document: VerifiedDocument,
}

/// Verifies the attestation extension of `cert_der` (an SVID's leaf) against the AWS
/// Nitro Enclaves root, at `at` (normally now). See [`Verifier::verify_attested_svid`].
pub fn verify_attested_svid(
    cert_der: &[u8],
    policy: &SvidPolicy,
    at: SystemTime,
) -> Result<Option<AttestedSvid>, SvidError> {
    Verifier::aws().verify_attested_svid(cert_der, policy, at)
}

impl Verifier {
    /// Verifies the attestation extension of `cert_der` (an SVID's leaf):
    /// - the certificate is valid at `at` and, with `policy.trust_domain`, names a SPIFFE
    ///   ID of that trust domain;
    /// - exactly one extension, non-critical, well formed; none is `Ok(None)` unless
    ///   `policy.required`;
    /// - the document's chain leads to the pinned root and is valid at the document's
    ///   own timestamp (NSM's certificates live three hours; an SVID may live longer),
    ///   and its signature verifies;
    /// - its `user_data` binds this certificate's key and serial ([`user_data_for`]);
    /// - it was made within the certificate's validity ([`MAX_FUTURE_SKEW`] either side);
    /// - `policy.document` holds at `at`: debug mode refused unless allowed, PCRs, age,
    ///   not from the future.
    ///
    /// The certificate's own chain and signature are not checked here: the TLS handshake
    /// (or the caller) does that against the trust bundle, and proves possession of the key.
    pub fn verify_attested_svid(
        &self,
        cert_der: &[u8],
        policy: &SvidPolicy,
        at: SystemTime,
    ) -> Result<Option<AttestedSvid>, SvidError> {
        let cert = parse(cert_der)?;
        let uris = uri_sans(&cert);
        if let Some(expected) = &policy.trust_domain {
            let prefix = format!("spiffe://{expected}/");
            if !matches!(uris.as_slice(), [uri] if uri.starts_with(&prefix)) {
                return Err(SvidError::TrustDomain {
                    expected: expected.clone(),
                    found: uris,
                });
            }
        }
        let validity = cert.validity();
        let not_before = SystemTime::from(validity.not_before.to_datetime());
        let not_after = SystemTime::from(validity.not_after.to_datetime());
        if at < not_before || at > not_after {
            return Err(SvidError::NotValidAt {
                not_before,
                not_after,
                at,
            });
        }
        let Some(document) = find_extension(&cert)? else {
            return if policy.required {
                Err(SvidError::Missing)
            } else {
                Ok(None)
            };
        };
        let verified = self
            .verify_signed(document, VerifyAt::DocumentTime)
            .map_err(SvidError::Document)?;
        let expected = binding(&cert);
        if verified.user_data.as_deref() != Some(expected.as_slice()) {
            return Err(SvidError::NotBound {
                got: verified
                    .user_data
                    .as_deref()
                    .map_or_else(|| "absent".to_owned(), hex),
                expected: hex(&expected),
            });
        }
        // NSM's clock and the enclave's may differ by a little; the binding, not the
        // time, is what ties the document to this certificate.
        if verified.timestamp + MAX_FUTURE_SKEW < not_before
            || verified.timestamp > not_after + MAX_FUTURE_SKEW
        {
            return Err(SvidError::Timestamp {
                timestamp: verified.timestamp,
                not_before,
                not_after,
            });
        }
        policy
            .document
            .check(&verified, at)
            .map_err(SvidError::Document)?;
        Ok(Some(AttestedSvid {
            uris,
            document: verified,
        }))
    }
}

/// The `user_data` an attestation document must carry for the certificate `cert_der`:
/// [`USER_DATA_PREFIX`] ‖ SHA-384(SubjectPublicKeyInfo) ‖ serial content octets.
pub fn user_data_for(cert_der: &[u8]) -> Result<Vec<u8>, SvidError> {
    Ok(binding(&parse(cert_der)?))
}

/// The DER `extnValue` content of the extension for `document`: `EnclaveAttestation`.
pub fn extension_value(document: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(document.len() + 8);
    der::write(&mut content, der::INTEGER, &[EXTENSION_VERSION]);
    der::write(&mut content, der::OCTET_STRING, document);
    let mut out = Vec::with_capacity(content.len() + 4);
    der::write(&mut out, der::SEQUENCE, &content);
    out
}

/// A certificate with the attestation extension added to its TBSCertificate, waiting for
/// the issuer's signature over [`Unsigned::tbs`].
#[derive(Debug)]
pub struct Unsigned {
    tbs: Vec<u8>,
    signature_algorithm: Vec<u8>,
}

impl Unsigned {
    /// The DER TBSCertificate to sign, with the issuer's key and the algorithm the
    /// certificate already names.
    pub fn tbs(&self) -> &[u8] {
        &self.tbs
    }

    /// The DER certificate, given the issuer's signature over [`Unsigned::tbs`] (for
    /// ECDSA, the DER `Ecdsa-Sig-Value`).
    pub fn finish(self, signature: &[u8]) -> Vec<u8> {
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(signature);
        let mut content = self.tbs;
        content.extend_from_slice(&self.signature_algorithm);
        der::write(&mut content, der::BIT_STRING, &bits);
        let mut out = Vec::with_capacity(content.len() + 4);
        der::write(&mut out, der::SEQUENCE, &content);
        out
    }
}

/// Adds the attestation extension for `document` to the signed certificate `cert_der`
/// (whose extensions are kept as they are, in order, the new one last). The old
/// signature is dropped: the result must be signed again by the same issuer.
pub fn add_extension(cert_der: &[u8], document: &[u8]) -> Result<Unsigned, SvidError> {
    add_raw_extension(cert_der, &extension_value(document), false)
}

/// Adds an extension with the attestation OID and any `extn_value` (and criticality) to
/// `cert_der`, as [`add_extension`] does: for tests and tools that make hostile
/// certificates (truncated values, other versions, critical or repeated extensions).
pub fn add_raw_extension(
    cert_der: &[u8],
    extn_value: &[u8],
    critical: bool,
) -> Result<Unsigned, SvidError> {
    let malformed = SvidError::Malformed;
    let (cert, rest) = der::read(cert_der, der::SEQUENCE).ok_or(malformed("not a SEQUENCE"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the certificate"));
    }
    let (tbs, rest) = der::read(cert, der::SEQUENCE).ok_or(malformed("no TBSCertificate"))?;
    let signature_algorithm = der::element(rest, der::SEQUENCE)
        .ok_or(malformed("no signature algorithm"))?
        .to_vec();
    // The fields of the TBSCertificate; extensions ([3]) come last.
    let mut fields = Vec::new();
    let mut cursor = tbs;
    while !cursor.is_empty() {
        let tag = cursor[0];
        let whole = der::element(cursor, tag).ok_or(malformed("a TBSCertificate field"))?;
        fields.push((tag, whole));
        cursor = &cursor[whole.len()..];
    }
    let Some((der::EXTENSIONS, extensions)) = fields.last().copied() else {
        return Err(malformed("the TBSCertificate has no extensions"));
    };
    let (explicit, _) = der::read(extensions, der::EXTENSIONS).ok_or(malformed("[3]"))?;
    let (list, _) = der::read(explicit, der::SEQUENCE).ok_or(malformed("Extensions"))?;

    let mut extension = Vec::with_capacity(extn_value.len() + 48);
    der::write(&mut extension, der::OID, &ATTESTED_SVID_OID_DER);
    if critical {
        der::write(&mut extension, der::BOOLEAN, &[0xff]);
    }
    der::write(&mut extension, der::OCTET_STRING, extn_value);
    let mut new_list = list.to_vec();
    der::write(&mut new_list, der::SEQUENCE, &extension);
    let mut sequence = Vec::with_capacity(new_list.len() + 4);
    der::write(&mut sequence, der::SEQUENCE, &new_list);

    let mut content: Vec<u8> = fields[..fields.len() - 1]
        .iter()
        .flat_map(|(_, whole)| whole.iter().copied())
        .collect();
    der::write(&mut content, der::EXTENSIONS, &sequence);
    let mut tbs = Vec::with_capacity(content.len() + 4);
    der::write(&mut tbs, der::SEQUENCE, &content);
    Ok(Unsigned {
        tbs,
        signature_algorithm,
    })
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(cert_der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Certificate(X509Error::InvalidCertificate)),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => {
            Err(SvidError::Certificate(e))
        }
        Err(x509_parser::nom::Err::Incomplete(_)) => {
            Err(SvidError::Certificate(X509Error::InvalidCertificate))
        }
    }
}

fn binding(cert: &X509Certificate<'_>) -> Vec<u8> {
    let spki = digest::digest(&digest::SHA384, cert.public_key().raw);
    let serial = cert.raw_serial();
    let mut out = Vec::with_capacity(USER_DATA_PREFIX.len() + 48 + serial.len());
    out.extend_from_slice(USER_DATA_PREFIX);
    out.extend_from_slice(spki.as_ref());
    out.extend_from_slice(serial);
    out
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The document inside the one attestation extension, if any.
fn find_extension<'a>(cert: &'a X509Certificate<'_>) -> Result<Option<&'a [u8]>, SvidError> {
    let ours: Vec<_> = cert
        .extensions()
        .iter()
        .filter(|e| e.oid.as_bytes() == ATTESTED_SVID_OID_DER)
        .collect();
    let extension = match ours.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => return Err(SvidError::Duplicate(many.len())),
    };
    if extension.critical {
        return Err(SvidError::Critical);
    }
    let malformed = SvidError::Malformed;
    let (content, rest) =
        der::read(extension.value, der::SEQUENCE).ok_or(malformed("not a DER SEQUENCE"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after EnclaveAttestation"));
    }
    let (version, rest) =
        der::read(content, der::INTEGER).ok_or(malformed("no version INTEGER"))?;
    let version = match version {
        [v] if *v < 0x80 => u64::from(*v),
        [] => return Err(malformed("an empty version INTEGER")),
        _ => u64::MAX,
    };
    if version != u64::from(EXTENSION_VERSION) {
        return Err(SvidError::Version(version));
    }
    let (document, rest) =
        der::read(rest, der::OCTET_STRING).ok_or(malformed("no document OCTET STRING"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the document"));
    }
    Ok(Some(document))
}
