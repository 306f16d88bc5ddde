//! The I/O every side of EnclaveID shares: connecting to and listening on an
//! [`Address`] (`vsock://CID:PORT` between an enclave and its parent instance,
//! `tcp://HOST:PORT` and `unix:///PATH` elsewhere), writing a file whole, and answering
//! read-only HTTP endpoints ([`http`]), carrying a connection both ways ([`pump`]).
//!
//! Parsing addresses is `enclaveid-checks`' (no I/O there); this crate adds the sockets.
//! AF_VSOCK cannot be bound outside a VM with a vsock device; everything but the bind
//! and the connect itself is the same code for the three kinds.
//!
//! ```no_run
//! use enclaveid_io::{Address, AddressExt as _};
//! # async fn demo() -> std::io::Result<()> {
//! let address: Address = "tcp://127.0.0.1:8090".parse().expect("an address");
//! let listener = address.bind().await?;
//! let (stream, peer) = listener.accept().await?;
//! # drop((stream, peer)); Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod crl_files;
mod file;
pub mod http;
pub mod pump;
mod transport;

pub use backoff::AcceptBackoff;
pub use crl_files::{CrlFilesError, read_crl_files};
pub use enclaveid_checks::address::{ACCEPTED, ANY_CID, Address, AddressError, PARENT_CID};
pub use file::write_atomically;
pub use transport::{AddressExt, Listener, Stream};
