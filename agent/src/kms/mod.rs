//! The `kms` upstream: certificate material released by AWS KMS only to the attested
//! enclave (KMS `Decrypt` with a `Recipient`).
//!
//! **In progress.** So far: [`cms`], reading and decrypting the `CiphertextForRecipient`
//! KMS answers with, and [`material`], the key-material object ACM for Nitro Enclaves
//! writes. The upstream itself (host channel, KMS call, chain checks, re-sync) is not
//! built yet and `upstream.kind = "kms"` is refused.

pub mod cms;
pub mod material;
