//! One address type for every link between an enclave, its parent instance and beyond:
//! `vsock://CID:PORT` in production, `tcp://HOST:PORT` and `unix:///PATH` for tests and
//! for running every side on one machine. Parsing and printing only; connecting and
//! listening are `enclaveid-io`'s.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// vsock CID of the parent instance, as seen from an enclave.
pub const PARENT_CID: u32 = 3;
/// vsock CID meaning "any", for listening on the parent instance.
pub const ANY_CID: u32 = u32::MAX;

/// What [`Address`] accepts, for messages.
pub const ACCEPTED: &str = "accepted: vsock://CID:PORT (CID a number, \"parent\" for 3 or \"any\"), tcp://HOST:PORT, unix:///ABSOLUTE/PATH";

/// Where to listen or connect.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix stream socket (absolute path).
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
    /// An AF_VSOCK context ID and port.
    Vsock {
        /// Context ID: 3 is the parent instance, `u32::MAX` any.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// Why a string is not an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an address: {reason}; {ACCEPTED}")]
pub struct AddressError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

// === impl Address ===

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| AddressError {
            input: s.to_owned(),
            reason,
        };
        if let Some(path) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("the socket path must be absolute"));
            }
            return Ok(Self::Unix(path));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("expected HOST:PORT with a port of 1 to 65535"));
            }
            return Ok(Self::Tcp(rest.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad("no :PORT"))?;
            let cid = match cid {
                "parent" => PARENT_CID,
                "any" => ANY_CID,
                n => n.parse().map_err(|_| bad("the CID is not a number"))?,
            };
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            return Ok(Self::Vsock { cid, port });
        }
        Err(bad("unknown scheme"))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for (text, address) in [
            ("vsock://3:8000", Address::Vsock { cid: 3, port: 8000 }),
            (
                "vsock://4294967295:1",
                Address::Vsock {
                    cid: ANY_CID,
                    port: 1,
                },
            ),
            ("tcp://127.0.0.1:9", Address::Tcp("127.0.0.1:9".into())),
            ("tcp://[::1]:9", Address::Tcp("[::1]:9".into())),
            ("unix:///run/h.sock", Address::Unix("/run/h.sock".into())),
        ] {
            assert_eq!(text.parse::<Address>().unwrap(), address);
            assert_eq!(address.to_string(), text);
        }
        assert_eq!(
            "vsock://parent:8000".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: PARENT_CID,
                port: 8000
            }
        );
        assert_eq!(
            "vsock://any:8000".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: ANY_CID,
                port: 8000
            }
        );
    }

    #[test]
    fn bad_addresses_say_what_is_accepted() {
        for bad in [
            "vsock://3",
            "vsock://x:1",
            "vsock://3:port",
            "tcp://host",
            "tcp://:80",
            "tcp://h:99999",
            "unix://relative.sock",
            "http://x:1",
            "",
        ] {
            let error = bad.parse::<Address>().unwrap_err().to_string();
            assert!(error.contains("accepted: vsock://CID:PORT"), "{error}");
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
