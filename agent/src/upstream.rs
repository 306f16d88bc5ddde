//! The `kms` upstream's sync loop: fetch the material through the host, have KMS release
//! its key to this enclave's attestation, check everything, hand a [`Signer`] to the
//! rotator, and do it again on a period and before the material ages out.
//!
//! One sync, in order: a fresh RSA-2048 recipient key; an attestation document binding
//! its public key; the key-material object, credentials, and a tunnel from the host; KMS
//! `Decrypt` with the `Recipient`; the CMS answer decrypted with the recipient key (which
//! is then dropped); the CRL; the chain, validity, revocation and key checks.

use std::time::{Duration, SystemTime};

use enclaveid_checks::Chain;
use enclaveid_checks::cms::{CmsError, EnvelopedData, RecipientKey};
use enclaveid_checks::crl::{CrlMemory, Revoked};
use enclaveid_checks::keys::{KeyError, SigningKey};
use enclaveid_checks::material::{KeyMaterial, MaterialError};
use enclaveid_checks::verify::{self, CheckError, Role};
use enclaveid_checks::wire::Credentials;
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::authority::{Authority, MintError};
use crate::config::KmsConfig;
use crate::enclave::Enclave;
use crate::host_client::{HostClient, HostError};
use crate::jwt::{JwtKey, JwtKeyError};
use crate::release::{self, ReleaseError};
use crate::rotation::{LeafSvid, Signer};

/// After a failed sync, the first retry waits this long, doubling (±20 %) up to the
/// resync interval and at most [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why a sync failed. The material already in service stays until it expires, unless
/// the failure is its own revocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SyncError {
    /// Attestation, the host's tunnel, or KMS failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The host did not deliver.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The key-material object is malformed.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The CMS answer does not open.
    #[error("CiphertextForRecipient")]
    Cms(#[source] CmsError),
    /// The released private key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The certificate material was refused.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// No CRL while `require_crl` is on.
    #[error(
        "the host at {host} offers no CRL and {setting} is true; give `enclaveid host` --crl, or set require_crl = false for a Private CA without a CRL"
    )]
    NoCrl {
        /// The host.
        host: enclaveid_io::Address,
        /// The setting that requires it.
        setting: &'static str,
    },
    /// JWT-signer material offered as the X.509 material.
    #[error(
        "the certificate (serial {serial}) certifies a JWT-SVID signing key (its only URI SAN is {trust_domain_id}), not a CA or an X.509-SVID; give it to `enclaveid host` as --jwt-material"
    )]
    JwtSignerAsMaterial {
        /// Its serial.
        serial: String,
        /// The trust-domain ID.
        trust_domain_id: String,
    },
    /// Leaf material for one SPIFFE ID while an entry names another.
    #[error(
        "the certificate (serial {serial}) is the X.509-SVID of {id} only, but an entry is {other}; with leaf material every entry must name the certificate's SPIFFE ID (or provision CA material)"
    )]
    LeafForOtherEntry {
        /// Its serial.
        serial: String,
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// The entry that names another.
        other: SpiffeId,
    },
    /// The CA material cannot mint.
    #[error("the CA material")]
    Mint(#[source] MintError),
    /// The JWT signing key's material failed; X.509-SVIDs go on.
    #[error("JWT key material")]
    Jwt(#[source] Box<SyncError>),
    /// JWT material whose certificate is not a JWT signer's.
    #[error(
        "the certificate (serial {serial}) is not a JWT-SVID signing key: its only URI SAN must be {trust_domain_id}"
    )]
    NotJwtSigner {
        /// Its serial.
        serial: String,
        /// The trust-domain ID.
        trust_domain_id: String,
    },
    /// The released JWT key cannot sign.
    #[error(transparent)]
    JwtKey(#[from] JwtKeyError),
    /// The sync did not finish in time: the host or KMS stalled (a host that opens the
    /// tunnel and relays nothing, for one).
    #[error(
        "the sync did not finish within {} (upstream.sync_timeout): the host or KMS stalled",
        humantime::format_duration(*timeout)
    )]
    Stalled {
        /// The timeout.
        timeout: Duration,
    },
}

impl SyncError {
    /// The revocation behind this error, if it is one.
    pub(crate) fn revoked(&self) -> Option<&Revoked> {
        match self {
            Self::Check(CheckError::Revoked(revoked)) => Some(revoked),
            Self::Jwt(inner) => inner.revoked(),
            _ => None,
        }
    }
}

/// The `kms` upstream.
pub(crate) struct KmsUpstream {
    config: KmsConfig,
    host: HostClient,
    roots: Vec<CertificateDer<'static>>,
    enclave: std::sync::Arc<Enclave>,
    trust_domain: TrustDomain,
    entry_ids: Vec<SpiffeId>,
    signers: mpsc::Sender<Option<Signer>>,
    jwt_keys: mpsc::Sender<Option<JwtKey>>,
    problems: watch::Sender<Option<String>>,
}

/// Where the upstream hands its results.
pub(crate) struct Outlets {
    /// Each new X.509 signer; `None` withdraws the current one (revoked).
    pub signers: mpsc::Sender<Option<Signer>>,
    /// Each new JWT signing key; `None` withdraws the current one (revoked).
    pub jwt_keys: mpsc::Sender<Option<JwtKey>>,
    /// What goes wrong, or `None` when all is well.
    pub problems: watch::Sender<Option<String>>,
}

/// What one sync produced, and how long each step took.
pub(crate) struct Synced {
    /// Whether a CRL was verified and applied.
    pub crl_verified: bool,
    /// The JWT signing key, when the host offered its material (or why it was refused).
    pub jwt: Option<Result<JwtKey, SyncError>>,
    /// The signer to hand to the rotator.
    pub signer: Signer,
    /// The certificate's serial.
    pub serial: String,
    /// The certificate's notBefore.
    pub not_before: SystemTime,
    /// The earliest notAfter of its chain.
    pub not_after: SystemTime,
    /// Step durations.
    pub timings: Timings,
}

/// How long each step of a sync took.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timings {
    /// Recipient key generation and the attestation document.
    pub attestation: Duration,
    /// Key material, credentials and CRL from the host.
    pub host: Duration,
    /// KMS Decrypt, tunnel included.
    pub kms: Duration,
    /// CMS parse and RSA-OAEP + AES-CBC decryption.
    pub cms: Duration,
    /// Chain, CRL and key checks.
    pub verify: Duration,
}

// === impl KmsUpstream ===

impl KmsUpstream {
    /// An upstream that hands what it checked to `outlets`.
    pub(crate) fn new(
        config: KmsConfig,
        roots: Vec<CertificateDer<'static>>,
        enclave: std::sync::Arc<Enclave>,
        trust_domain: TrustDomain,
        entry_ids: Vec<SpiffeId>,
        outlets: Outlets,
    ) -> Self {
        let Outlets {
            signers,
            jwt_keys,
            problems,
        } = outlets;
        problems.send_replace(Some("no key material yet".into()));
        Self {
            host: HostClient::new(config.host.clone()),
            config,
            roots,
            enclave,
            trust_domain,
            entry_ids,
            signers,
            jwt_keys,
            problems,
        }
    }

    /// Syncs until `shutdown` resolves.
    pub(crate) async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut current: Option<(String, SystemTime, SystemTime)> = None;
        let mut failures = 0u32;
        let mut memory = CrlMemory::default();
        // When a current CRL was last verified (`None`: never, or none is required).
        let mut crl_verified: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.config.sync_timeout, self.sync(&mut memory))
                .await
                .unwrap_or(Err(SyncError::Stalled {
                    timeout: self.config.sync_timeout,
                }));
            let delay = match outcome {
                Ok(synced) => {
                    failures = 0;
                    if synced.crl_verified {
                        crl_verified = Some(Instant::now());
                    }
                    let t = synced.timings;
                    let fresh = current
                        .as_ref()
                        .is_none_or(|(serial, ..)| *serial != synced.serial);
                    tracing::info!(
                        serial = %synced.serial,
                        not_after = %humantime::format_rfc3339_seconds(synced.not_after),
                        new = fresh,
                        total_us = started.elapsed().as_micros() as u64,
                        attestation_us = t.attestation.as_micros() as u64,
                        host_us = t.host.as_micros() as u64,
                        kms_us = t.kms.as_micros() as u64,
                        cms_us = t.cms.as_micros() as u64,
                        verify_us = t.verify.as_micros() as u64,
                        "key material released by KMS and checked"
                    );
                    crate::telemetry::metrics().sync_succeeded(
                        synced.not_after,
                        t.attestation,
                        t.kms,
                    );
                    current = Some((synced.serial.clone(), synced.not_before, synced.not_after));
                    if fresh && self.signers.send(Some(synced.signer)).await.is_err() {
                        return;
                    }
                    let (delay, problem) = next_sync(
                        SystemTime::now(),
                        synced.not_before,
                        synced.not_after,
                        self.config.resync_interval,
                    );
                    let synced_jwt_revoked = synced
                        .jwt
                        .as_ref()
                        .is_some_and(|jwt| jwt.as_ref().is_err_and(|e| e.revoked().is_some()));
                    let jwt_problem = match synced.jwt {
                        None => None,
                        Some(Ok(key)) => {
                            if self.jwt_keys.send(Some(key)).await.is_err() {
                                return;
                            }
                            None
                        }
                        Some(Err(error)) => {
                            let error = Chain(&error).to_string();
                            tracing::error!(%error, "JWT signing key refused");
                            if synced_jwt_revoked && self.jwt_keys.send(None).await.is_err() {
                                return;
                            }
                            Some(format!("JWT signing key refused: {error}"))
                        }
                    };
                    self.problems.send_replace(match (problem, jwt_problem) {
                        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                        (a, b) => a.or(b),
                    });
                    delay
                }
                Err(error)
                    if error.revoked().is_some_and(|revoked| {
                        current
                            .as_ref()
                            .is_some_and(|(current, ..)| *current == revoked.leaf_serial)
                    }) =>
                {
                    // What is being served was revoked: stop at once, not at expiry.
                    current = None;
                    failures = failures.saturating_add(1);
                    let message = Chain(&error).to_string();
                    tracing::error!(%message, "the current key material is revoked");
                    crate::telemetry::metrics().sync_failed(true);
                    self.problems
                        .send_replace(Some(format!("no valid key material: {message}")));
                    if self.signers.send(None).await.is_err() {
                        return;
                    }
                    retry_delay(failures, self.config.resync_interval)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let mut delay = retry_delay(failures, self.config.resync_interval);
                    let error = Chain(&error).to_string();
                    let crl_deadline = self
                        .config
                        .require_crl
                        .then_some(crl_verified)
                        .flatten()
                        .map(|at| crate::time::later(at, self.config.crl_max_age));
                    let crl_expired = crl_deadline.is_some_and(|at| Instant::now() >= at);
                    if crl_expired && current.is_some() {
                        // A host that withholds CRLs cannot keep revoked material in
                        // service: without a current, verified one, it is withdrawn.
                        current = None;
                        tracing::error!(%error, crl_max_age = ?self.config.crl_max_age, "no current, verified CRL for too long; the key material is withdrawn");
                        if self.withdraw().await.is_err() {
                            return;
                        }
                    }
                    let still_valid = current
                        .as_ref()
                        .is_some_and(|(_, _, not_after)| *not_after > SystemTime::now());
                    tracing::error!(%error, retry_in = ?delay, serving_current = still_valid, "key material sync failed");
                    crate::telemetry::metrics().sync_failed(!still_valid);
                    self.problems.send_replace(Some(if still_valid {
                        format!("key material sync failing (serving the current material until it expires, or until {} without a current CRL): {error}", humantime::format_duration(self.config.crl_max_age))
                    } else if crl_expired {
                        format!(
                            "no valid key material: no current, verified CRL for more than {} (upstream.crl_max_age); the material is withdrawn until the host serves one: {error}",
                            humantime::format_duration(self.config.crl_max_age)
                        )
                    } else {
                        format!("no valid key material: {error}")
                    }));
                    // Look again when the material would lose its CRL, if that is sooner.
                    if let Some(at) = crl_deadline.filter(|_| current.is_some()) {
                        delay = delay.min(at.saturating_duration_since(Instant::now()));
                    }
                    delay.max(Duration::from_millis(100))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Withdraws the signer and the JWT key: nothing of the material is served.
    async fn withdraw(&self) -> Result<(), ()> {
        self.signers.send(None).await.map_err(drop)?;
        self.jwt_keys.send(None).await.map_err(drop)
    }

    /// One sync.
    pub(crate) async fn sync(&self, memory: &mut CrlMemory) -> Result<Synced, SyncError> {
        let mut timings = Timings::default();
        let step = Instant::now();
        let (recipient, document, verified) = release::recipient(&self.enclave).await?;
        timings.attestation = step.elapsed();

        let step = Instant::now();
        let (fetched, jwt_material) = tokio::join!(
            async {
                tokio::try_join!(
                    self.host.key_material(),
                    self.host.credentials(),
                    self.host.crl()
                )
            },
            self.host.jwt_key_material()
        );
        let (material, credentials, crl) = fetched?;
        let material = KeyMaterial::from_json(&material)?;
        let certs = material.certificates()?;
        let blob = material.ciphertext_blob()?;
        let crl = fresh_crl(
            crl,
            self.config.require_crl.then_some("upstream.require_crl"),
            &self.config.host,
            memory,
        )?;
        timings.host = step.elapsed();

        let step = Instant::now();
        let cms = release::decrypt_with_recipient(
            &self.host,
            &self.config.kms_endpoint,
            &self.config.region,
            &credentials,
            &blob,
            &document,
            &verified,
        )
        .await?;
        timings.kms = step.elapsed();

        let step = Instant::now();
        let plaintext = open(&cms, &recipient)?;
        let key = SigningKey::from_pem(&plaintext, "the private key KMS released")?;
        drop(plaintext);
        timings.cms = step.elapsed();

        // The JWT signing key, if the host offers one: released and checked the same way,
        // with the same attestation document. Its failure does not stop X.509-SVIDs.
        let jwt = match jwt_material {
            Ok(None) => None,
            Ok(Some(json)) => Some(
                self.jwt_key(
                    &json,
                    &Attested {
                        recipient: &recipient,
                        document: &document,
                        verified: &verified,
                        credentials: &credentials,
                    },
                    crl.as_deref(),
                    memory,
                )
                .await
                .map_err(|error| SyncError::Jwt(Box::new(error))),
            ),
            Err(error) => Some(Err(SyncError::Jwt(Box::new(error.into())))),
        };
        drop(recipient);

        let step = Instant::now();
        let checked = verify::check(
            &certs,
            &key,
            &self.roots,
            crl.as_deref(),
            &self.trust_domain,
            SystemTime::now(),
        );
        // The CRL was verified (issuer's signature, freshness) whether or not it lists
        // our own material: workloads get it either way.
        if let (Some(path), Some(crl), Ok(_) | Err(CheckError::Revoked(_))) =
            (&self.config.crl_export_path, &crl, &checked)
        {
            export_crl(path, crl);
        }
        let checked = remembered(memory, crl.as_deref(), checked)?;
        let signer = match &checked.role {
            Role::Ca => {
                let mut path = checked.path.clone();
                let ca = path.remove(0);
                let chain = std::iter::once(ca.clone()).chain(path).collect();
                Signer::Ca(
                    Authority::from_ca(ca, key, chain, self.roots.clone(), &self.trust_domain)
                        .map_err(SyncError::Mint)?,
                )
            }
            Role::JwtSigner => {
                return Err(SyncError::JwtSignerAsMaterial {
                    serial: checked.serial,
                    trust_domain_id: self.trust_domain.id_string(),
                });
            }
            Role::Leaf(id) => {
                if let Some(other) = self.entry_ids.iter().find(|e| *e != id) {
                    return Err(SyncError::LeafForOtherEntry {
                        serial: checked.serial.clone(),
                        id: id.clone(),
                        other: other.clone(),
                    });
                }
                let (chain_der, key_der) = verify::leaf_svid_key(&checked, &key)?;
                Signer::Leaf(LeafSvid {
                    spiffe_id: id.clone(),
                    chain_der,
                    key_der,
                    not_after: checked.not_after,
                    serial: checked.serial.clone(),
                })
            }
        };
        timings.verify = step.elapsed();
        Ok(Synced {
            crl_verified: crl.is_some(),
            jwt,
            signer,
            serial: checked.serial,
            not_before: checked.not_before,
            not_after: checked.not_after,
            timings,
        })
    }
}

impl KmsUpstream {
    /// Releases and checks the JWT signing key of `json` (key material JSON).
    async fn jwt_key(
        &self,
        json: &[u8],
        attested: &Attested<'_>,
        crl: Option<&[u8]>,
        memory: &mut CrlMemory,
    ) -> Result<JwtKey, SyncError> {
        let material = KeyMaterial::from_json(json)?;
        let certs = material.certificates()?;
        let key = release_key(
            &self.host,
            (&self.config.kms_endpoint, &self.config.region),
            attested,
            &material,
            "the JWT signing key KMS released",
        )
        .await?;
        let checked = verify::check(
            &certs,
            &key,
            &self.roots,
            crl,
            &self.trust_domain,
            SystemTime::now(),
        );
        let checked = remembered(memory, crl, checked)?;
        if checked.role != Role::JwtSigner {
            return Err(SyncError::NotJwtSigner {
                serial: checked.serial,
                trust_domain_id: self.trust_domain.id_string(),
            });
        }
        Ok(JwtKey::from_signing_key(&key)?)
    }
}

/// What this sync's KMS calls are made with: the recipient key, the attestation document
/// binding it, and the host's credentials.
pub(crate) struct Attested<'a> {
    pub(crate) recipient: &'a RecipientKey,
    pub(crate) document: &'a [u8],
    pub(crate) verified: &'a enclaveid_attestor::VerifiedDocument,
    pub(crate) credentials: &'a Credentials,
}

/// The private key of `material`, released by KMS (at `kms`: endpoint and region) to
/// `attested` through `host`'s tunnel. `what` names it in errors.
pub(crate) async fn release_key(
    host: &HostClient,
    kms: (&crate::config::KmsEndpoint, &str),
    attested: &Attested<'_>,
    material: &KeyMaterial,
    what: &str,
) -> Result<SigningKey, SyncError> {
    let cms = release::decrypt_with_recipient(
        host,
        kms.0,
        kms.1,
        attested.credentials,
        &material.ciphertext_blob()?,
        attested.document,
        attested.verified,
    )
    .await?;
    let plaintext = open(&cms, attested.recipient)?;
    Ok(SigningKey::from_pem(&plaintext, what)?)
}

/// The host's CRL once it passes the replay check (a CRL older than one already applied
/// is a replay: revocation never rolls back); refused when it is missing and `required`
/// names the setting that requires one.
pub(crate) fn fresh_crl(
    crl: Option<Vec<u8>>,
    required: Option<&'static str>,
    host: &enclaveid_io::Address,
    memory: &CrlMemory,
) -> Result<Option<Vec<u8>>, SyncError> {
    match (&crl, required) {
        (None, Some(setting)) => Err(SyncError::NoCrl {
            host: host.clone(),
            setting,
        }),
        (Some(bytes), _) => {
            memory
                .check(bytes)
                .map_err(|e| SyncError::Check(CheckError::Crl(e)))?;
            Ok(crl)
        }
        (None, None) => Ok(None),
    }
}

/// The outcome of a material check, with the CRL memory brought up to date: a CRL that
/// verified is recorded as applied, a revocation is remembered, and a certificate once
/// seen revoked stays revoked even when a later CRL no longer lists it.
pub(crate) fn remembered<T: Serial>(
    memory: &mut CrlMemory,
    crl: Option<&[u8]>,
    checked: Result<T, CheckError>,
) -> Result<T, CheckError> {
    if let (Some(crl), Ok(_) | Err(CheckError::Revoked(_))) = (crl, &checked) {
        memory.record(crl);
    }
    if let Err(CheckError::Revoked(revoked)) = &checked {
        memory.remember(revoked);
    }
    let checked = checked?;
    match memory.revocation_of(checked.serial()) {
        Some(revoked) => Err(CheckError::Revoked(revoked.clone())),
        None => Ok(checked),
    }
}

/// Checked material, known by its certificate's serial.
pub(crate) trait Serial {
    /// The certificate's serial, hex.
    fn serial(&self) -> &str;
}

impl Serial for verify::Checked {
    fn serial(&self) -> &str {
        &self.serial
    }
}

impl Serial for verify::ServerChecked {
    fn serial(&self) -> &str {
        &self.serial
    }
}

/// The plaintext of a `CiphertextForRecipient` addressed to `recipient`.
fn open(cms: &[u8], recipient: &RecipientKey) -> Result<zeroize::Zeroizing<Vec<u8>>, SyncError> {
    EnvelopedData::parse(cms)
        .and_then(|data| data.decrypt(recipient))
        .map_err(SyncError::Cms)
}

/// When to sync next after a success, and what to report: the resync interval, or sooner
/// when 2/3 of the material's validity will have passed. Past that point a refetch that
/// brings the same material reports it as a problem (nobody has renewed it).
pub(crate) fn next_sync(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    interval: Duration,
) -> (Duration, Option<String>) {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let renew_at = crate::time::later_wall(not_before, lifetime.saturating_mul(2) / 3);
    match renew_at.duration_since(now) {
        Ok(until) => (until.min(interval).max(Duration::from_secs(1)), None),
        Err(_) => (
            interval,
            Some(format!(
                "the key material is past 2/3 of its validity and no newer one is available; it expires at {}",
                humantime::format_rfc3339_seconds(not_after)
            )),
        ),
    }
}

/// Writes the CRL just checked where workloads read it (PEM, 0644, atomically). A failure
/// is logged: the agent's own check stands, and the previous file stays whole.
fn export_crl(path: &std::path::Path, crl: &[u8]) {
    let pem_bytes = if crl.trim_ascii_start().starts_with(b"-----BEGIN") {
        crl.to_vec()
    } else {
        pem::encode(&pem::Pem::new("X509 CRL", crl.to_vec())).into_bytes()
    };
    match enclaveid_io::write_atomically(path, &pem_bytes, 0o644) {
        Ok(()) => tracing::debug!(path = %path.display(), "CRL exported"),
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "could not export the CRL for workloads");
        }
    }
}

pub(crate) fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let base = FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_RETRY)
        .min(interval);
    base.mul_f64(rand::random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_comes_at_the_interval_or_at_two_thirds_of_the_validity() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let ten_min = Duration::from_secs(600);
        // Young material: the interval.
        assert_eq!(
            next_sync(start, start, start + 3 * day, ten_min),
            (ten_min, None)
        );
        // Close to 2/3: exactly then.
        let (delay, problem) = next_sync(
            start + 2 * day - Duration::from_secs(60),
            start,
            start + 3 * day,
            ten_min,
        );
        assert_eq!(delay, Duration::from_secs(60));
        assert_eq!(problem, None);
        // Past 2/3 and still the same: keep trying at the interval, say so.
        let (delay, problem) = next_sync(
            start + 2 * day + Duration::from_secs(1),
            start,
            start + 3 * day,
            ten_min,
        );
        assert_eq!(delay, ten_min);
        assert!(problem.unwrap().contains("past 2/3"));
    }

    #[test]
    fn retries_back_off_with_jitter_up_to_the_interval() {
        let interval = Duration::from_secs(600);
        for failures in 1..40 {
            let delay = retry_delay(failures, interval);
            let base = FIRST_RETRY
                .saturating_mul(2u32.saturating_pow((failures - 1).min(16)))
                .min(MAX_RETRY)
                .min(interval);
            assert!(
                delay >= base.mul_f64(0.79) && delay <= base.mul_f64(1.21),
                "{failures}: {delay:?}"
            );
        }
        assert!(retry_delay(30, Duration::from_secs(5)) <= Duration::from_secs(6));
    }
}
