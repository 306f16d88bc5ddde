//! KMS `Decrypt` of any ciphertext, released to this enclave only: the path the `kms`
//! upstream takes for its certificate key, offered to workloads for their own secrets (the
//! mesh example's inference service opens its model key with it).
//!
//! KMS evaluates the key policy's `kms:RecipientAttestation:*` conditions on the
//! attestation document, and encrypts the plaintext to the document's public key; the
//! parent instance, which relays the call, sees only ciphertext.

use zeroize::Zeroizing;

use enclaveid_attestor::VerifiedDocument;

use crate::kms::cms::{EnvelopedData, RecipientKey};
use crate::kms::remote::{self, Credentials, HostClient, KmsEndpoint};
use crate::{Enclave, Error};

/// Decrypts with KMS through the host's tunnel, released to this enclave's attestation.
pub struct Release {
    enclave: Enclave,
    host: HostClient,
    endpoint: KmsEndpoint,
    region: String,
}

// === impl Release ===

impl Release {
    /// Decrypts as `enclave`, through the host at `host`, with KMS at `endpoint` in
    /// `region`.
    pub fn new(
        enclave: Enclave,
        host: HostClient,
        endpoint: KmsEndpoint,
        region: impl Into<String>,
    ) -> Self {
        Self {
            enclave,
            host,
            endpoint,
            region: region.into(),
        }
    }

    /// Decrypts `ciphertext_blob` (a KMS `CiphertextBlob`). A fresh RSA-2048 recipient key
    /// is bound in a fresh attestation document and dropped after the CMS answer is
    /// opened. KMS refusing (the key policy's conditions not met) is [`Error::Kms`],
    /// with this enclave's measurements to compare with the policy.
    pub async fn decrypt(&self, ciphertext_blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
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
        EnvelopedData::parse(&cms)?.decrypt(&recipient)
    }
}

/// A fresh RSA-2048 recipient key and an attestation document binding its public key,
/// verified.
pub(crate) async fn recipient(
    enclave: &Enclave,
) -> Result<(RecipientKey, Vec<u8>, VerifiedDocument), Error> {
    let recipient = tokio::task::spawn_blocking(RecipientKey::generate)
        .await
        .map_err(|e| Error::Crypto(e.to_string()))??;
    let (document, verified) =
        enclave.attest(Some(recipient.subject_public_key_info().to_vec()))?;
    Ok((recipient, document, verified))
}

/// KMS `Decrypt` of `blob` with `document` as the `Recipient`, through the host's tunnel;
/// returns the `CiphertextForRecipient` (CMS). An `AccessDeniedException` gets this
/// enclave's measurements appended: KMS does not say which condition failed.
pub(crate) async fn decrypt_with_recipient(
    host: &HostClient,
    endpoint: &KmsEndpoint,
    region: &str,
    credentials: &Credentials,
    blob: &[u8],
    document: &[u8],
    verified: &VerifiedDocument,
) -> Result<Vec<u8>, Error> {
    let tunnel = host.tunnel(&endpoint.authority()).await?;
    remote::decrypt_for_recipient(
        tunnel,
        endpoint,
        region,
        credentials,
        remote::decrypt_request_body(blob, document),
    )
    .await
    .map_err(|error| match error {
        Error::Kms(message) if message.contains("AccessDeniedException") => Error::Kms(format!(
            "{message}; this enclave's measurements, to compare with the key policy's kms:RecipientAttestation conditions: {}",
            measurements(&verified.pcrs)
        )),
        other => other,
    })
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
