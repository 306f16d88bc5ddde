//! The `kms` upstream: certificate material released by AWS KMS only to the attested
//! enclave (KMS `Decrypt` with a `Recipient`), as ACM for Nitro Enclaves does.
//!
//! [`material`] is the key-material object; [`remote`] the calls to the host and, through
//! its tunnel, to KMS; [`cms`] reads and decrypts the `CiphertextForRecipient`; [`verify`]
//! checks the certificate before anything of it is served; [`upstream`] is the sync loop;
//! [`release`] decrypts any ciphertext the same way, for workloads' own secrets.

pub mod cms;
pub mod material;
pub mod release;
pub mod remote;
pub mod upstream;
pub mod verify;
