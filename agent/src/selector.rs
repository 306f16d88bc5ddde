//! Workload selectors, spelled as SPIRE's `unix` workload attestor spells them, so that
//! registration entries carry over to SPIRE unchanged.
//!
//! | selector | matches |
//! | --- | --- |
//! | `unix:uid:N` | the caller's effective user ID (from `SO_PEERCRED`) |
//! | `unix:user:NAME` | the name of that user |
//! | `unix:gid:N` | the caller's primary group ID (from `SO_PEERCRED`) |
//! | `unix:group:NAME` | the name of that group |
//! | `unix:supplementary_gid:N` | each supplementary group ID (`/proc/PID/status`) |
//! | `unix:supplementary_group:NAME` | the name of each supplementary group |
//! | `unix:path:/abs/path` | the path of the caller's executable (`/proc/PID/exe`) |
//! | `unix:sha256:HEX` | the SHA-256 of the caller's executable, lower-case hex |
//! | `nitro:pcr0:HEX` … `nitro:pcr8:HEX` | a PCR of this enclave's own verified attestation document |
//! | `nitro:module_id:ID` | the enclave ID in that document |
//!
//! `nitro:` selectors describe the enclave (node), not the caller: they hold for every
//! caller of this agent or for none, so an entry needs at least one `unix:` selector too.

use std::fmt;
use std::str::FromStr;

/// One workload selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Selector {
    /// `unix:uid:N`
    Uid(u32),
    /// `unix:user:NAME`
    User(String),
    /// `unix:gid:N`
    Gid(u32),
    /// `unix:group:NAME`
    Group(String),
    /// `unix:supplementary_gid:N`
    SupplementaryGid(u32),
    /// `unix:supplementary_group:NAME`
    SupplementaryGroup(String),
    /// `unix:path:/abs/path`
    Path(String),
    /// `unix:sha256:HEX` (stored lower-case)
    Sha256(String),
    /// `nitro:pcrN:HEX` for N in 0..=8 (stored lower-case)
    Pcr(u8, String),
    /// `nitro:module_id:ID`
    ModuleId(String),
}

/// The accepted selector forms, for error messages.
pub const ACCEPTED: &str = "unix:uid:N, unix:user:NAME, unix:gid:N, unix:group:NAME, \
     unix:supplementary_gid:N, unix:supplementary_group:NAME, unix:path:/ABS/PATH, unix:sha256:HEX, \
     nitro:pcr0:HEX .. nitro:pcr8:HEX, nitro:module_id:ID";

/// Why a selector string was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

// === impl Selector ===

impl Selector {
    /// Whether this selector describes the enclave (node) rather than the caller.
    pub fn is_node_selector(&self) -> bool {
        matches!(self, Self::Pcr(..) | Self::ModuleId(_))
    }

    /// Whether matching this selector needs a user or group name (an NSS lookup).
    pub fn needs_names(&self) -> bool {
        matches!(
            self,
            Self::User(_) | Self::Group(_) | Self::SupplementaryGroup(_)
        )
    }

    /// Whether matching this selector needs the caller's supplementary groups (`/proc`).
    pub fn needs_supplementary_groups(&self) -> bool {
        matches!(
            self,
            Self::SupplementaryGid(_) | Self::SupplementaryGroup(_)
        )
    }

    /// Whether matching this selector needs the caller's executable path.
    pub fn needs_path(&self) -> bool {
        matches!(self, Self::Path(_))
    }

    /// Whether matching this selector needs the caller's executable hashed.
    pub fn needs_sha256(&self) -> bool {
        matches!(self, Self::Sha256(_))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SelectorError(format!("{why}; accepted: {ACCEPTED}"));
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(ty), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("a selector is TYPE:KEY:VALUE"));
        };
        if value.is_empty() {
            return Err(err(&format!("`{kind}:{ty}` needs a value")));
        }
        if kind == "nitro" {
            return parse_nitro(ty, value).map_err(|why| err(&why));
        }
        if kind != "unix" {
            return Err(err(&format!("unknown selector type `{kind}`")));
        }
        let id = || {
            value.parse::<u32>().map_err(|_| {
                err(&format!(
                    "`unix:{ty}` takes a decimal number, not `{value}`"
                ))
            })
        };
        let name = || {
            if value.chars().any(|c| c.is_whitespace() || c == ':') {
                Err(err(&format!("`{value}` is not a user or group name")))
            } else {
                Ok(value.to_owned())
            }
        };
        Ok(match ty {
            "uid" => Self::Uid(id()?),
            "gid" => Self::Gid(id()?),
            "supplementary_gid" => Self::SupplementaryGid(id()?),
            "user" => Self::User(name()?),
            "group" => Self::Group(name()?),
            "supplementary_group" => Self::SupplementaryGroup(name()?),
            "path" if value.starts_with('/') => Self::Path(value.to_owned()),
            "path" => {
                return Err(err(&format!(
                    "`unix:path` takes an absolute path, not `{value}`"
                )));
            }
            "sha256" if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Self::Sha256(value.to_ascii_lowercase())
            }
            "sha256" => {
                return Err(err(&format!(
                    "`unix:sha256` takes 64 hex digits, not `{value}`"
                )));
            }
            other => return Err(err(&format!("unknown selector `unix:{other}`"))),
        })
    }
}

fn parse_nitro(ty: &str, value: &str) -> Result<Selector, String> {
    if ty == "module_id" {
        return Ok(Selector::ModuleId(value.to_owned()));
    }
    let index = ty
        .strip_prefix("pcr")
        .and_then(|i| i.parse::<u8>().ok())
        .filter(|i| *i <= 8)
        .ok_or_else(|| format!("unknown selector `nitro:{ty}`"))?;
    if !matches!(value.len(), 64 | 96 | 128) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`nitro:pcr{index}` takes a PCR in hex (96 digits for SHA-384), not `{value}`"
        ));
    }
    Ok(Selector::Pcr(index, value.to_ascii_lowercase()))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(v) => write!(f, "unix:uid:{v}"),
            Self::User(v) => write!(f, "unix:user:{v}"),
            Self::Gid(v) => write!(f, "unix:gid:{v}"),
            Self::Group(v) => write!(f, "unix:group:{v}"),
            Self::SupplementaryGid(v) => write!(f, "unix:supplementary_gid:{v}"),
            Self::SupplementaryGroup(v) => write!(f, "unix:supplementary_group:{v}"),
            Self::Path(v) => write!(f, "unix:path:{v}"),
            Self::Sha256(v) => write!(f, "unix:sha256:{v}"),
            Self::Pcr(i, v) => write!(f, "nitro:pcr{i}:{v}"),
            Self::ModuleId(v) => write!(f, "nitro:module_id:{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_selectors_round_trip_to_their_canonical_form() {
        let (pcr_in, pcr_out) = (
            format!("nitro:pcr8:{}", "AB".repeat(48)),
            format!("nitro:pcr8:{}", "ab".repeat(48)),
        );
        let cases = [
            ("unix:uid:1000", "unix:uid:1000"),
            ("unix:gid:0", "unix:gid:0"),
            ("unix:supplementary_gid:27", "unix:supplementary_gid:27"),
            ("unix:user:alice", "unix:user:alice"),
            ("unix:group:wheel", "unix:group:wheel"),
            (
                "unix:supplementary_group:docker",
                "unix:supplementary_group:docker",
            ),
            ("unix:path:/usr/bin/gateway", "unix:path:/usr/bin/gateway"),
            ("unix:path:/odd:name", "unix:path:/odd:name"),
            (
                "nitro:module_id:i-0bee92034f3d60691-enc01943c5eaab3ad6a",
                "nitro:module_id:i-0bee92034f3d60691-enc01943c5eaab3ad6a",
            ),
            (pcr_in.as_str(), pcr_out.as_str()),
            (
                "unix:sha256:ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789",
                "unix:sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            ),
        ];
        for (input, canonical) in cases {
            let selector: Selector = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(selector.to_string(), canonical, "{input}");
            assert_eq!(canonical.parse::<Selector>().unwrap(), selector);
        }
    }

    #[test]
    fn refused_selectors_say_what_is_accepted() {
        let cases = [
            ("", "TYPE:KEY:VALUE"),
            ("unix:uid", "TYPE:KEY:VALUE"),
            ("k8s:ns:default", "unknown selector type `k8s`"),
            ("unix:pid:1", "unknown selector `unix:pid`"),
            ("unix:uid:-1", "decimal number"),
            ("unix:uid:4294967296", "decimal number"),
            ("unix:uid:", "needs a value"),
            ("unix:path:relative/bin", "absolute path"),
            ("unix:sha256:abc", "64 hex digits"),
            ("unix:user:a b", "not a user or group name"),
            ("nitro:pcr9:00", "unknown selector `nitro:pcr9`"),
            ("nitro:pcr0:abcd", "PCR in hex"),
            ("nitro:pcr0:", "needs a value"),
        ];
        for (input, why) in cases {
            let error = input.parse::<Selector>().unwrap_err().to_string();
            assert!(error.contains(why), "{input}: {error}");
            assert!(error.contains("accepted: unix:uid:N"), "{input}: {error}");
        }
    }
}
