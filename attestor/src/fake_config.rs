//! What a fake enclave looks like: plain data, so that configurations naming the fake
//! attestor parse in every build, while the attestor itself ([`crate::FakeAttestor`],
//! feature `fake`) is compiled only into development builds.

use std::collections::BTreeMap;

/// What the fake enclave looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeConfig {
    /// The enclave ID in `module_id`.
    pub module_id: String,
    /// PCR values by index (48 bytes each); PCRs 0..=15 not given are derived from their
    /// index, so documents look like a production enclave's.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// Debug mode: every PCR is zero, as NSM reports for `--debug-mode` enclaves.
    pub debug: bool,
    /// The root to sign with; `None` generates one.
    pub root: Option<FakeRoot>,
}

/// A fake attestation root: a self-signed P-384 CA certificate and its key, both PEM.
/// Not a secret (it proves nothing); it is carried so that every process of a test pins
/// the same root.
#[derive(Clone, PartialEq, Eq)]
pub struct FakeRoot {
    /// The root certificate.
    pub cert_pem: String,
    /// Its PKCS#8 P-384 key.
    pub key_pem: String,
}

impl std::fmt::Debug for FakeRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRoot").finish_non_exhaustive()
    }
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            module_id: "i-0fa4e0000000000000-enc0fa4e000000000000".into(),
            pcrs: BTreeMap::new(),
            debug: false,
            root: None,
        }
    }
}
