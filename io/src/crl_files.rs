//! CRL files that peers' chains are checked against, read again at every check so that a
//! new CRL applies to the next handshake: the mesh's `--crl` and `enclaveid proxy --crl`
//! (such as the agent's `upstream.crl_export_path`).
//!
//! A file that does not exist yet counts as "no CRL" (the agent writes it after its first
//! sync); one that cannot be read or parsed is an error, so that the caller refuses every
//! peer (fail closed).

use std::path::{Path, PathBuf};

use enclaveid_checks::revocation::{RevocationError, RevocationLists};

/// Why the CRL files could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlFilesError {
    /// A file exists but cannot be read.
    #[error("the CRL {} cannot be read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold CRLs.
    #[error(transparent)]
    Crl(#[from] RevocationError),
}

/// The CRLs in `paths` (PEM `X509 CRL` blocks, or one DER CRL a file).
pub fn read_crl_files(paths: &[impl AsRef<Path>]) -> Result<RevocationLists, CrlFilesError> {
    let mut lists = RevocationLists::default();
    for path in paths {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(bytes) => lists.add(&bytes, &path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CrlFilesError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(lists)
}
