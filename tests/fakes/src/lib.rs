//! Stand-ins for what cannot run here, faked faithfully, for the tests and the no-AWS
//! demo of the mesh example: AWS KMS releasing a key to an attested enclave ([`kms`]) and
//! AWS Private CA issuing certificates and CRLs ([`pca`]).

#![forbid(unsafe_code)]
#![allow(
    clippy::expect_used,
    reason = "test support: a broken fake must fail loudly, and only in tests and the demo"
)]

pub mod kms;
pub mod pca;
