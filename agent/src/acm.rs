//! `[[acm_certificate]]`: a TLS certificate for DNS names as ACM for Nitro Enclaves
//! delivers it (issued by the Private CA; the object ACM writes to S3; its key encrypted
//! under a KMS key that releases it only to an attested enclave), fetched through the
//! parent's host, checked, and kept current for the `[[files]]` blocks that name it. It is
//! never an X.509-SVID: nothing of it reaches the Workload API.
//!
//! One sync: the object (host op 8), the credentials and the CRL from the host; when the
//! certificate or its encrypted key changed since the last sync, a fresh recipient key,
//! an attestation document binding it, and KMS `Decrypt` with the `Recipient`; then
//! [`verify::check_server`]: key match, path to the Private CA root, validity, the CRL,
//! and every expected DNS name. ACM renews a certificate in place (same ARN, same object
//! key): the next sync finds the new one and the files follow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use enclaveid_checks::Chain;
use enclaveid_checks::crl::CrlMemory;
use enclaveid_checks::keys::SigningKey;
use enclaveid_checks::material::KeyMaterial;
use enclaveid_checks::verify;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::config::AcmCertificate;
use crate::enclave::Enclave;
use crate::host_client::HostClient;
use crate::release;
use crate::upstream::{self, Attested, SyncError};

/// A checked ACM certificate, as the files are written from it.
pub(crate) struct AcmServed {
    /// The certificate and the intermediates up to the root, concatenated DER.
    pub(crate) chain_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub(crate) key_der: Zeroizing<Vec<u8>>,
    /// The Private CA root(s) it chains to, concatenated DER.
    pub(crate) bundle_der: Vec<u8>,
}

/// Every `[[acm_certificate]]` in service, by ARN.
pub(crate) type AcmCertificates = BTreeMap<String, Arc<AcmServed>>;

/// Where the syncs publish: one map for every certificate.
pub(crate) type Outlet = Arc<watch::Sender<Arc<AcmCertificates>>>;

/// One `[[acm_certificate]]`'s sync loop.
pub(crate) struct AcmSync {
    config: AcmCertificate,
    roots: Vec<CertificateDer<'static>>,
    enclave: Enclave,
    host: HostClient,
    served: Outlet,
    problems: watch::Sender<Option<String>>,
}

/// The certificate in service, and what it was released from.
struct Current {
    material: KeyMaterial,
    key: Arc<SigningKey>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

// === impl AcmSync ===

impl AcmSync {
    /// A sync of `config` that publishes to `served` and reports to `problems`.
    pub(crate) fn new(
        config: AcmCertificate,
        roots: Vec<CertificateDer<'static>>,
        enclave: Enclave,
        served: Outlet,
        problems: watch::Sender<Option<String>>,
    ) -> Self {
        problems.send_replace(Some(format!(
            "ACM certificate {}: not released yet",
            config.arn
        )));
        Self {
            host: HostClient::new(config.host.clone()),
            config,
            roots,
            enclave,
            served,
            problems,
        }
    }

    /// Syncs until `shutdown` resolves.
    pub(crate) async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let arn = self.config.arn.clone();
        let mut current: Option<Current> = None;
        let mut memory = CrlMemory::default();
        let mut failures = 0u32;
        let mut crl_verified: Option<Instant> = None;
        loop {
            let outcome = tokio::time::timeout(
                self.config.sync_timeout,
                self.sync(current.as_ref(), &mut memory),
            )
            .await
            .unwrap_or(Err(SyncError::Stalled {
                timeout: self.config.sync_timeout,
            }));
            let delay = match outcome {
                Ok((next, served, crl)) => {
                    failures = 0;
                    if crl {
                        crl_verified = Some(Instant::now());
                    }
                    if current.as_ref().is_none_or(|c| c.serial != next.serial) {
                        tracing::info!(
                            %arn,
                            serial = %next.serial,
                            not_after = %humantime::format_rfc3339_seconds(next.not_after),
                            dns_names = ?self.config.dns_names,
                            "ACM certificate released by KMS and checked"
                        );
                        self.served.send_modify(|map| {
                            Arc::make_mut(map).insert(arn.clone(), Arc::new(served));
                        });
                    }
                    let (delay, problem) = upstream::next_sync(
                        SystemTime::now(),
                        next.not_before,
                        next.not_after,
                        self.config.resync_interval,
                    );
                    self.problems
                        .send_replace(problem.map(|p| format!("ACM certificate {arn}: {p}")));
                    current = Some(next);
                    delay
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let message = Chain(&error).to_string();
                    let crl_deadline = self
                        .config
                        .require_crl
                        .then_some(crl_verified)
                        .flatten()
                        .map(|at| crate::time::later(at, self.config.crl_max_age));
                    let crl_expired = crl_deadline.is_some_and(|at| Instant::now() >= at);
                    let revoked = error.revoked().is_some_and(|revoked| {
                        current
                            .as_ref()
                            .is_some_and(|c| c.serial == revoked.leaf_serial)
                    });
                    let expired = current
                        .as_ref()
                        .is_some_and(|c| c.not_after <= SystemTime::now());
                    let withdraw = current.is_some() && (revoked || crl_expired || expired);
                    if withdraw {
                        current = None;
                        self.served.send_modify(|map| {
                            Arc::make_mut(map).remove(&arn);
                        });
                    }
                    let delay = upstream::retry_delay(failures, self.config.resync_interval);
                    tracing::error!(%arn, error = %message, retry_in = ?delay, withdrawn = withdraw, serving_current = current.is_some(), "ACM certificate sync failed");
                    self.problems.send_replace(Some(match &current {
                        Some(c) => format!(
                            "ACM certificate {arn}: sync failing (the files keep the current certificate, serial {}, until it expires at {}): {message}",
                            c.serial,
                            humantime::format_rfc3339_seconds(c.not_after)
                        ),
                        None if withdraw => format!(
                            "ACM certificate {arn}: withdrawn, the files are no longer renewed: {message}"
                        ),
                        None => format!("ACM certificate {arn}: not released: {message}"),
                    }));
                    // Look again when the certificate would expire or lose its CRL.
                    let mut delay = delay;
                    if let Some(c) = &current {
                        let until = c
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        delay = delay.min(until);
                        if let Some(at) = crl_deadline {
                            delay = delay.min(at.saturating_duration_since(Instant::now()));
                        }
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

    /// One sync: the certificate in service after it, what the files get, and whether a
    /// CRL was verified.
    async fn sync(
        &self,
        current: Option<&Current>,
        memory: &mut CrlMemory,
    ) -> Result<(Current, AcmServed, bool), SyncError> {
        let (json, crl) =
            tokio::try_join!(self.host.acm_certificate(&self.config.arn), self.host.crl())?;
        let material = KeyMaterial::from_json(&json)?;
        let certs = material.certificates()?;
        let crl = upstream::fresh_crl(
            crl,
            self.config
                .require_crl
                .then_some("acm_certificate.require_crl"),
            &self.config.host,
            memory,
        )?;
        // KMS is asked again only when the object changed: the same key otherwise.
        let key = match current.filter(|c| c.material == material) {
            Some(current) => current.key.clone(),
            None => Arc::new(self.release(&material).await?),
        };
        let checked = verify::check_server(
            &certs,
            &key,
            &self.roots,
            crl.as_deref(),
            &self.config.dns_names,
            SystemTime::now(),
        );
        let checked = upstream::remembered(memory, crl.as_deref(), checked)?;
        let served = AcmServed {
            chain_der: checked
                .path
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect(),
            key_der: key.to_pkcs8_der()?,
            bundle_der: self.roots.iter().flat_map(|c| c.iter().copied()).collect(),
        };
        Ok((
            Current {
                material,
                key,
                serial: checked.serial,
                not_before: checked.not_before,
                not_after: checked.not_after,
            },
            served,
            crl.is_some(),
        ))
    }

    /// The key of `material`, released by KMS to this enclave.
    async fn release(&self, material: &KeyMaterial) -> Result<SigningKey, SyncError> {
        let (recipient, document, verified) = release::recipient(&self.enclave).await?;
        let credentials = self.host.credentials().await?;
        upstream::release_key(
            &self.host,
            (&self.config.kms_endpoint, &self.config.region),
            &Attested {
                recipient: &recipient,
                document: &document,
                verified: &verified,
                credentials: &credentials,
            },
            material,
            "the ACM certificate's private key KMS released",
        )
        .await
    }
}
