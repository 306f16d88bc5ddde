//! `enclaveid host`: the parent instance's side. It is untrusted by design; it only
//! relays what the enclave verifies itself ([`protocol`] describes what it offers).

pub mod protocol;
#[cfg(feature = "aws")]
mod server;

#[cfg(feature = "aws")]
pub(crate) use server::read_object;
#[cfg(feature = "aws")]
pub use server::{Host, HostConfig, MaterialSource, ObjectLocation};
