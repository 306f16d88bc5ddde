//! Files written whole.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Writes `bytes` to `path` with `mode` through a temporary file (created 0600) in the
/// same directory, synced and renamed into place: never a partial file, and a key is
/// never readable by others, not even before the rename. The previous file stays whole
/// if anything fails.
///
/// A writer killed before the rename (SIGKILL, a power cut) leaves its temporary file
/// behind, which may hold a key; the next write into the directory removes such files
/// once they are a minute old (younger ones may be another writer's, still working).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    remove_stale_temporaries(dir, STALE_AFTER);
    let mut file = tempfile::Builder::new()
        .prefix(TEMPORARY_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    if mode != 0o600 {
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How temporary files of [`write_atomically`] are named.
const TEMPORARY_PREFIX: &str = ".enclaveid-";
/// When a temporary file left behind counts as abandoned.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes this process's kind of temporary files in `dir` (regular files named
/// `.enclaveid-*`, owned by this uid) last modified over `older_than` ago. Best effort:
/// what cannot be read or removed is left.
fn remove_stale_temporaries(dir: &Path, older_than: std::time::Duration) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEMPORARY_PREFIX)
        {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let stale = meta
            .modified()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if meta.file_type().is_file() && meta.uid() == me && stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_whole_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("material.json");
        write_atomically(&path, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomically(&path, b"[]", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[]");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // A temporary file a killed writer left, an hour old, goes with the next write; a
        // fresh one (another writer's, maybe) stays.
        let abandoned = dir.path().join(".enclaveid-abandoned");
        let fresh = dir.path().join(".enclaveid-fresh");
        std::fs::write(&abandoned, b"key").unwrap();
        std::fs::write(&fresh, b"key").unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&abandoned)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        write_atomically(&path, b"{}", 0o600).unwrap();
        assert!(
            !abandoned.exists(),
            "an abandoned temporary file is removed"
        );
        assert!(fresh.exists(), "a fresh one is not");

        let missing = dir.path().join("no/such/dir/file");
        assert!(write_atomically(&missing, b"x", 0o600).is_err());
    }
}
