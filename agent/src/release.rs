//! KMS `Decrypt` of any ciphertext, released to this enclave only: the path the `kms`
//! upstream takes for its certificate key, offered to workloads for their own secrets (the
//! mesh example's inference service opens its model key with it).
//!
//! KMS evaluates the key policy's `kms:RecipientAttestation:*` conditions on the
//! attestation document, and encrypts the plaintext to the document's public key; the
//! parent instance, which relays the call, sees only ciphertext.

use zeroize::Zeroizing;

use enclaveid_attestor::VerifiedDocument;
use enclaveid_checks::cms::{CmsError, EnvelopedData, RecipientKey};
use enclaveid_checks::wire::Credentials;
use enclaveid_io::Address;

use crate::config::KmsEndpoint;
use crate::enclave::Enclave;
use crate::host_client::{HostClient, HostError};
use crate::kms::{self, KmsError};

/// Decrypts with KMS through the host's tunnel, released to this enclave's attestation.
#[derive(Debug)]
pub struct Release {
    enclave: Enclave,
    host: HostClient,
    endpoint: KmsEndpoint,
    region: String,
}

/// Why KMS did not release a plaintext to this enclave.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The enclave could not attest itself, or its own document was refused.
    #[error("attesting this enclave for KMS")]
    Attestation(#[source] enclaveid_attestor::Error),
    /// The recipient key could not be made.
    #[error("making the recipient key")]
    Recipient(#[source] CmsError),
    /// The host did not deliver credentials or the tunnel.
    #[error(transparent)]
    Host(#[from] HostError),
    /// KMS refused or failed the call.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The answer does not open with the recipient key.
    #[error("CiphertextForRecipient")]
    Cms(#[source] CmsError),
}

impl ReleaseError {
    /// Whether KMS refused because the key policy's conditions were not met.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, Self::Kms(kms) if kms.is_access_denied())
    }
}

// === impl Release ===

impl Release {
    /// Decrypts as `enclave`, through the host at `host`, with KMS at `endpoint` in
    /// `region`.
    pub fn new(
        enclave: Enclave,
        host: Address,
        endpoint: KmsEndpoint,
        region: impl Into<String>,
    ) -> Self {
        Self {
            enclave,
            host: HostClient::new(host),
            endpoint,
            region: region.into(),
        }
    }

    /// Decrypts `ciphertext_blob` (a KMS `CiphertextBlob`). A fresh RSA-2048 recipient key
    /// is bound in a fresh attestation document and dropped after the CMS answer is
    /// opened. KMS refusing (the key policy's conditions not met) is
    /// [`ReleaseError::Kms`], with this enclave's measurements to compare with the policy.
    pub async fn decrypt(
        &self,
        ciphertext_blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ReleaseError> {
        let (recipient, document, verified) = recipient(&self.enclave).await?;
        let credentials = self.host.credentials().await?;
        let cms = decrypt_with_recipient(
            &self.host,
            &self.endpoint,
            &self.region,
            &credentials,
            ciphertext_blob,
            &document,
            &verified,
        )
        .await?;
        EnvelopedData::parse(&cms)
            .and_then(|data| data.decrypt(&recipient))
            .map_err(ReleaseError::Cms)
    }
}

/// A fresh RSA-2048 recipient key and an attestation document binding its public key,
/// verified.
pub(crate) async fn recipient(
    enclave: &Enclave,
) -> Result<(RecipientKey, Vec<u8>, VerifiedDocument), ReleaseError> {
    let recipient = tokio::task::spawn_blocking(RecipientKey::generate)
        .await
        .map_err(|_| ReleaseError::Recipient(CmsError::Crypto("the key generation task")))?
        .map_err(ReleaseError::Recipient)?;
    let (document, verified) = enclave
        .attest(Some(recipient.subject_public_key_info().to_vec()))
        .map_err(ReleaseError::Attestation)?;
    Ok((recipient, document, verified))
}

/// KMS `Decrypt` of `blob` with `document` as the `Recipient`, through the host's tunnel;
/// returns the `CiphertextForRecipient` (CMS). An `AccessDeniedException` gets this
/// enclave's measurements attached: KMS does not say which condition failed.
pub(crate) async fn decrypt_with_recipient(
    host: &HostClient,
    endpoint: &KmsEndpoint,
    region: &str,
    credentials: &Credentials,
    blob: &[u8],
    document: &[u8],
    verified: &VerifiedDocument,
) -> Result<Vec<u8>, ReleaseError> {
    let tunnel = host.tunnel(&endpoint.authority()).await?;
    kms::decrypt_for_recipient(
        tunnel,
        endpoint,
        region,
        credentials,
        kms::decrypt_request_body(blob, document),
    )
    .await
    .map_err(|error| match error {
        KmsError::Refused {
            endpoint,
            status,
            code,
            message,
            measurements: None,
        } if code == "AccessDeniedException" => KmsError::Refused {
            endpoint,
            status,
            code,
            message,
            measurements: Some(measurements(&verified.pcrs)),
        },
        other => other,
    })
    .map_err(ReleaseError::Kms)
}

/// `ImageSha384 (PCR0) = …, PCR1 = …, PCR2 = …, PCR3 = …, PCR4 = …, PCR8 = …`.
fn measurements(pcrs: &std::collections::BTreeMap<u8, Vec<u8>>) -> String {
    [0u8, 1, 2, 3, 4, 8]
        .iter()
        .filter_map(|i| {
            let value = enclaveid_attestor::hex(pcrs.get(i)?);
            Some(if *i == 0 {
                format!("ImageSha384 (PCR0) = {value}")
            } else {
                format!("PCR{i} = {value}")
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}
