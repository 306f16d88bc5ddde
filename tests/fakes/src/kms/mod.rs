//! A fake AWS KMS for tests: what cannot run here (KMS releasing a key to an attested
//! enclave), faked faithfully.
//!
//! - [`cms`]: answers in the CMS format real KMS uses for `CiphertextForRecipient`.
//! - [`server`]: the AWS JSON 1.1 protocol (`TrentService.Encrypt` / `Decrypt`), key
//!   policies with `kms:RecipientAttestation` conditions, attestation documents verified
//!   with the attestor crate.

pub mod cms;
pub mod server;
