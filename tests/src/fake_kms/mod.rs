//! A fake AWS KMS for tests: what cannot run here (KMS releasing a key to an attested
//! enclave), faked faithfully.
//!
//! **In progress.** So far: [`cms`], which answers in the CMS format real KMS uses for
//! `CiphertextForRecipient`. The HTTP server speaking the AWS JSON 1.1 protocol
//! (`TrentService.Decrypt` / `Encrypt`), attestation checks and key policies come next.

pub mod cms;
