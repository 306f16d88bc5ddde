//! The Nitro Secure Module, through `/dev/nsm` and AWS's `aws-nitro-enclaves-nsm-api`.
//!
//! Only useful inside a Nitro Enclave; compiled with the `nsm` feature. Requests over
//! NSM's field limits are refused before the device is asked.

use std::path::Path;

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use crate::{AttestationRequest, Attestor, Error};

/// The device NSM is reached through.
pub const NSM_DEVICE: &str = "/dev/nsm";

/// The Nitro Secure Module of this enclave.
#[derive(Debug)]
pub struct NsmAttestor {
    fd: i32,
}

impl NsmAttestor {
    /// Opens `/dev/nsm`; [`Error::NoDevice`] outside an enclave.
    pub fn open() -> Result<Self, Error> {
        if !Path::new(NSM_DEVICE).exists() {
            return Err(Error::NoDevice);
        }
        let fd = nsm_init();
        if fd < 0 {
            return Err(Error::Device(format!(
                "{NSM_DEVICE} exists but could not be opened"
            )));
        }
        Ok(Self { fd })
    }
}

impl Attestor for NsmAttestor {
    fn attest(&self, request: &AttestationRequest) -> Result<Vec<u8>, Error> {
        request.check_limits()?;
        let response = nsm_process_request(
            self.fd,
            Request::Attestation {
                user_data: request.user_data.clone().map(ByteBuf::from),
                nonce: request.nonce.clone().map(ByteBuf::from),
                public_key: request.public_key.clone().map(ByteBuf::from),
            },
        );
        match response {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(Error::Device(format!("{code:?}"))),
            other => Err(Error::Device(format!("unexpected response {other:?}"))),
        }
    }
}

impl Drop for NsmAttestor {
    fn drop(&mut self) {
        nsm_exit(self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_an_enclave_the_device_is_missing_with_a_clear_error() {
        if Path::new(NSM_DEVICE).exists() {
            eprintln!(
                "SKIPPED: {NSM_DEVICE} exists; this test checks the error outside an enclave"
            );
            return;
        }
        let error = NsmAttestor::open().unwrap_err();
        assert!(
            error.to_string().contains("use attestor kind = \"fake\""),
            "{error}"
        );
    }
}
