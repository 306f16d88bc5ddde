//! Unix workload attestation: the selectors of a caller of the Workload API, from the
//! socket's peer credentials (`SO_PEERCRED`, captured by tonic at accept) and `/proc`.
//!
//! Only what the configured entries can match on is looked up: `unix:uid` and `unix:gid`
//! come from the kernel's peer credentials and need no I/O at all; user and group names
//! need an NSS lookup; supplementary groups, the executable's path and its hash need
//! `/proc/PID`. Those lookups run on the blocking pool.
//!
//! PID reuse: the kernel hands us a PID; by the time `/proc/PID` is read the caller may
//! have exited and another process may hold that PID. The process start time
//! (`/proc/PID/stat` field 22) is read before and after every other `/proc` lookup and
//! must not change, and the process's effective UID must still be the one the socket
//! reported; otherwise attestation fails and the call gets `Unavailable`. Selectors from
//! the peer credentials alone do not depend on the PID and are immune to its reuse.
//!
//! Exec after connect: the peer credentials name the process that connected, and keep
//! naming it after it `execve`s another binary (its PID and start time do not change)
//! while a child it forked keeps the socket and calls. When an entry uses `unix:path` or
//! `unix:sha256`, the executable the process runs (device and inode of `/proc/PID/exe`)
//! is noted when the connection is accepted, and a call from a process that runs another
//! executable since is refused. What this does not stop: a process of the same uid can
//! still ptrace or otherwise control a process of that uid that runs the named binary;
//! executable selectors tell binaries apart, not users from themselves.
//!
//! Hashing: only executables up to `limits.max_executable_bytes` are hashed for
//! `unix:sha256`; a larger one fails attestation (a caller cannot make the agent read an
//! 8 GiB sparse file on every call).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use enclaveid_workload_api::{Caller, Error as ApiError, Selectors, WorkloadAttestor};
use nix::unistd::{Gid, Group, Uid, User};
use sha2::{Digest, Sha256};

use crate::selector::Selector;

/// The executable a process runs, as `/proc/PID/exe` resolves: which file, and the
/// process's start time (the same PID later is another process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessImage {
    start_time: u64,
    dev: u64,
    ino: u64,
}

/// Why a caller could not be attested. The Workload API answers `Unavailable` with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AttestationError {
    /// The peer credentials carry no PID, and an entry needs `/proc`.
    #[error("the kernel reported no PID for the caller")]
    NoPid,
    /// `/proc/PID` could not be read.
    #[error("process {pid} could not be inspected ({what}: {source}); it may have exited")]
    Gone {
        /// The caller's PID.
        pid: i32,
        /// What was being read.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The process behind the PID runs as another user than the one that connected.
    #[error(
        "process {pid} runs as uid {euid:?} but connected as uid {uid}; refusing (PID reused or credentials changed)"
    )]
    UidChanged {
        /// The caller's PID.
        pid: i32,
        /// The process's effective uid now.
        euid: Option<u32>,
        /// The uid the socket reported.
        uid: u32,
    },
    /// The process was replaced while it was inspected.
    #[error("process {pid} was replaced during attestation (PID reused); refusing")]
    Replaced {
        /// The caller's PID.
        pid: i32,
    },
    /// The process runs another executable than when it connected.
    #[error(
        "process {pid} runs another executable than when it connected (exec after connect); refusing: connect again from the process that calls"
    )]
    ExecAfterConnect {
        /// The caller's PID.
        pid: i32,
    },
    /// The process could not be inspected when it connected.
    #[error("process {pid} could not be inspected when it connected; it may have exited")]
    NotNoted {
        /// The caller's PID.
        pid: i32,
    },
    /// The executable is larger than what is hashed.
    #[error(
        "process {pid} runs an executable of {size} bytes; unix:sha256 hashes at most {max} (limits.max_executable_bytes)"
    )]
    ExecutableTooLarge {
        /// The caller's PID.
        pid: i32,
        /// The executable's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The blocking task failed.
    #[error("attestation task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl From<AttestationError> for ApiError {
    fn from(error: AttestationError) -> Self {
        Self::Attestation(Box::new(error))
    }
}

/// Attests callers of the Workload API from `/proc`.
#[derive(Clone)]
pub(crate) struct UnixAttestor {
    inner: Arc<Inner>,
}

struct Inner {
    proc_root: std::path::PathBuf,
    /// What the configured selectors need beyond the peer credentials. Hashing a large
    /// binary, or asking NSS, on every call would be wasted work when no entry uses it.
    /// Atomics: with the `spire` upstream, entries (and so these) change while serving.
    need_names: AtomicBool,
    need_supplementary_groups: AtomicBool,
    need_path: AtomicBool,
    need_sha256: AtomicBool,
    /// Note every caller's executable at accept, even while no entry names one (entries
    /// that do may arrive later; the exec-after-connect check needs the note).
    note_always: bool,
    /// The largest executable hashed for `unix:sha256`.
    max_executable_bytes: u64,
    /// SHA-256 of executables, keyed by what identifies the file's content on disk.
    hashes: Mutex<HashMap<FileKey, String>>,
    /// Selectors of the enclave itself (`nitro:`), true for every caller.
    node_selectors: std::sync::RwLock<Vec<String>>,
    /// All of the enclave's node selectors; those some entry names are active.
    all_node_selectors: Vec<Selector>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Executables hashed are remembered up to this many; the cache is then cleared.
const HASH_CACHE_ENTRIES: usize = 256;

// === impl UnixAttestor ===

impl UnixAttestor {
    /// An attestor that reads only what the given selectors need, and adds those of the
    /// enclave's own `node_selectors` they name to every caller's (only those can change
    /// a match; every caller's stream carries its selectors, so others would cost memory).
    pub(crate) fn new<'a>(
        selectors_in_use: impl IntoIterator<Item = &'a Selector>,
        node_selectors: Vec<Selector>,
        max_executable_bytes: u64,
    ) -> Self {
        let mut attestor = Self::with_proc_root("/proc", std::iter::empty());
        if let Some(inner) = Arc::get_mut(&mut attestor.inner) {
            inner.all_node_selectors = node_selectors;
            inner.max_executable_bytes = max_executable_bytes;
        }
        // After the node selectors are known: it picks those the entries name.
        attestor.set_needs(selectors_in_use);
        attestor
    }

    fn with_proc_root<'a>(
        proc_root: impl Into<std::path::PathBuf>,
        selectors_in_use: impl IntoIterator<Item = &'a Selector>,
    ) -> Self {
        let attestor = Self {
            inner: Arc::new(Inner {
                proc_root: proc_root.into(),
                need_names: AtomicBool::new(false),
                need_supplementary_groups: AtomicBool::new(false),
                need_path: AtomicBool::new(false),
                need_sha256: AtomicBool::new(false),
                note_always: false,
                max_executable_bytes: crate::config::DEFAULT_MAX_EXECUTABLE_BYTES,
                hashes: Mutex::new(HashMap::new()),
                node_selectors: std::sync::RwLock::default(),
                all_node_selectors: Vec::new(),
            }),
        };
        attestor.set_needs(selectors_in_use);
        attestor
    }

    /// An attestor for entries that change while serving (the `spire` upstream): it
    /// reads what [`UnixAttestor::set_needs`] says the current entries need, and notes
    /// every caller's executable at accept.
    pub(crate) fn for_changing_entries(max_executable_bytes: u64) -> Self {
        let mut attestor = Self::new(std::iter::empty(), Vec::new(), max_executable_bytes);
        if let Some(inner) = Arc::get_mut(&mut attestor.inner) {
            inner.note_always = true;
        }
        attestor
    }

    /// Reads what `selectors` (the entries' now) need, and no more; adds the node
    /// selectors they name to every caller's.
    pub(crate) fn set_needs<'a>(&self, selectors: impl IntoIterator<Item = &'a Selector>) {
        let (mut names, mut groups, mut path, mut sha256) = (false, false, false, false);
        let mut nodes = Vec::new();
        for selector in selectors {
            names |= selector.needs_names();
            groups |= selector.needs_supplementary_groups();
            path |= selector.needs_path();
            sha256 |= selector.needs_sha256();
            if self.inner.all_node_selectors.contains(selector) {
                nodes.push(selector.to_string());
            }
        }
        nodes.sort();
        nodes.dedup();
        *self
            .inner
            .node_selectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = nodes;
        let inner = &self.inner;
        inner.need_names.store(names, Ordering::Relaxed);
        inner
            .need_supplementary_groups
            .store(groups, Ordering::Relaxed);
        inner.need_path.store(path, Ordering::Relaxed);
        inner.need_sha256.store(sha256, Ordering::Relaxed);
    }

    fn need_names(&self) -> bool {
        self.inner.need_names.load(Ordering::Relaxed)
    }

    fn need_supplementary_groups(&self) -> bool {
        self.inner.need_supplementary_groups.load(Ordering::Relaxed)
    }

    fn need_path(&self) -> bool {
        self.inner.need_path.load(Ordering::Relaxed)
    }

    fn need_sha256(&self) -> bool {
        self.inner.need_sha256.load(Ordering::Relaxed)
    }

    fn needs_proc(&self) -> bool {
        self.need_supplementary_groups() || self.need_path() || self.need_sha256()
    }

    fn needs_blocking_io(&self) -> bool {
        self.needs_proc() || self.need_names()
    }

    /// The selectors of `caller`, doing any `/proc` and NSS lookups synchronously.
    fn needs_image(&self) -> bool {
        self.need_path() || self.need_sha256()
    }

    /// What the process runs now, when an entry names executables.
    fn note(&self, caller: &Caller) -> Option<ProcessImage> {
        if !self.needs_image() && !self.inner.note_always {
            return None;
        }
        let pid = caller.pid.filter(|pid| *pid > 0)?;
        image_of(&self.inner.proc_root.join(pid.to_string())).ok()
    }

    /// The selectors of `caller`, doing any `/proc` and NSS lookups synchronously;
    /// `accepted` is what its process ran when it connected.
    pub(crate) fn attest_blocking(
        &self,
        caller: Caller,
        accepted: Option<ProcessImage>,
    ) -> Result<Selectors, AttestationError> {
        let inner = &self.inner;
        let mut selectors: Selectors = inner
            .node_selectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        selectors.insert(Selector::Uid(caller.uid).to_string());
        selectors.insert(Selector::Gid(caller.gid).to_string());
        if self.need_names() {
            if let Ok(Some(user)) = User::from_uid(Uid::from_raw(caller.uid)) {
                selectors.insert(Selector::User(user.name).to_string());
            }
            if let Ok(Some(group)) = Group::from_gid(Gid::from_raw(caller.gid)) {
                selectors.insert(Selector::Group(group.name).to_string());
            }
        }
        if !self.needs_proc() {
            return Ok(selectors);
        }

        let pid = caller
            .pid
            .filter(|pid| *pid > 0)
            .ok_or(AttestationError::NoPid)?;
        let proc_dir = inner.proc_root.join(pid.to_string());
        let gone = |what, source| AttestationError::Gone { pid, what, source };
        let started = start_time(&proc_dir).map_err(|e| gone("stat", e))?;

        let status =
            std::fs::read_to_string(proc_dir.join("status")).map_err(|e| gone("status", e))?;
        let euid = status_field(&status, "Uid:")
            .and_then(|f| f.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if euid != Some(caller.uid) {
            return Err(AttestationError::UidChanged {
                pid,
                euid,
                uid: caller.uid,
            });
        }
        if self.need_supplementary_groups() {
            for gid in status_field(&status, "Groups:")
                .unwrap_or_default()
                .split_whitespace()
            {
                let Ok(gid) = gid.parse::<u32>() else {
                    continue;
                };
                selectors.insert(Selector::SupplementaryGid(gid).to_string());
                if self.need_names()
                    && let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid))
                {
                    selectors.insert(Selector::SupplementaryGroup(group.name).to_string());
                }
            }
        }

        let exe = proc_dir.join("exe");
        if self.needs_image() {
            let accepted = accepted.ok_or(AttestationError::NotNoted { pid })?;
            let now = image_of(&proc_dir).map_err(|e| gone("exe", e))?;
            if now != accepted {
                return Err(AttestationError::ExecAfterConnect { pid });
            }
        }
        if self.need_path() {
            let path = std::fs::read_link(&exe).map_err(|e| gone("exe", e))?;
            selectors.insert(Selector::Path(path.to_string_lossy().into_owned()).to_string());
        }
        if self.need_sha256() {
            let digest = self.sha256_of(&exe, pid, accepted)?;
            selectors.insert(Selector::Sha256(digest).to_string());
        }

        if start_time(&proc_dir).map_err(|e| gone("stat", e))? != started {
            return Err(AttestationError::Replaced { pid });
        }
        Ok(selectors)
    }

    /// The SHA-256 of the file behind `/proc/PID/exe`: the executable the process runs,
    /// even when its path was since replaced. It must be the file noted at accept, and no
    /// larger than the limit.
    fn sha256_of(
        &self,
        exe: &Path,
        pid: i32,
        accepted: Option<ProcessImage>,
    ) -> Result<String, AttestationError> {
        use std::os::unix::fs::MetadataExt as _;
        let gone = |source| AttestationError::Gone {
            pid,
            what: "hashing exe",
            source,
        };
        let mut file = std::fs::File::open(exe).map_err(gone)?;
        let meta = file.metadata().map_err(gone)?;
        if accepted.is_some_and(|image| (image.dev, image.ino) != (meta.dev(), meta.ino())) {
            return Err(AttestationError::ExecAfterConnect { pid });
        }
        if meta.len() > self.inner.max_executable_bytes {
            return Err(AttestationError::ExecutableTooLarge {
                pid,
                size: meta.len(),
                max: self.inner.max_executable_bytes,
            });
        }
        let key = file_key(&meta);
        let hashes = &self.inner.hashes;
        if let Some(hit) = hashes
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).cloned())
        {
            return Ok(hit);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        // Read no more than the size checked above, even if the file grows meanwhile.
        let mut left = meta.len();
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want]).map_err(gone)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let digest = enclaveid_attestor::hex(&hasher.finalize());
        if let Ok(mut cache) = hashes.lock() {
            if cache.len() >= HASH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, digest.clone());
        }
        Ok(digest)
    }
}

impl WorkloadAttestor for UnixAttestor {
    type Accepted = Option<ProcessImage>;

    fn accept(&self, caller: &Caller) -> Option<ProcessImage> {
        self.note(caller)
    }

    async fn attest(
        &self,
        caller: Caller,
        accepted: &Option<ProcessImage>,
    ) -> Result<Selectors, ApiError> {
        let accepted = *accepted;
        if !self.needs_blocking_io() {
            // Peer credentials only: no I/O, no thread hop.
            return Ok(self.attest_blocking(caller, accepted)?);
        }
        let this = self.clone();
        let attested = tokio::task::spawn_blocking(move || this.attest_blocking(caller, accepted))
            .await
            .map_err(AttestationError::Task)?;
        Ok(attested?)
    }
}

/// What the process in `proc_dir` runs: its start time and its executable's identity.
fn image_of(proc_dir: &Path) -> std::io::Result<ProcessImage> {
    use std::os::unix::fs::MetadataExt as _;
    let start_time = start_time(proc_dir)?;
    let exe = std::fs::metadata(proc_dir.join("exe"))?;
    Ok(ProcessImage {
        start_time,
        dev: exe.dev(),
        ino: exe.ino(),
    })
}

fn file_key(meta: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    }
}

/// Field 22 of `/proc/PID/stat`, the start time in clock ticks since boot. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the last
/// `)`.
fn start_time(proc_dir: &Path) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(proc_dir.join("stat"))?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    // After `)` come field 3 (state) onwards: field 22 is the 20th.
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed /proc/PID/stat")
        })
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Caller {
        Caller {
            pid: Some(std::process::id() as i32),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn this_process_is_attested_with_uid_gid_and_what_entries_need() {
        let exe = std::env::current_exe().unwrap();
        let path = Selector::Path(exe.to_string_lossy().into_owned());
        let attestor = UnixAttestor::new(
            [
                &path,
                &Selector::Sha256("0".repeat(64)),
                &Selector::User("x".into()),
                &Selector::SupplementaryGid(0),
            ],
            Vec::new(),
            crate::config::DEFAULT_MAX_EXECUTABLE_BYTES,
        );
        let selectors = attestor
            .attest_blocking(me(), attestor.note(&me()))
            .unwrap();
        let list: Vec<_> = selectors.iter().collect();
        if let Ok(Some(user)) = User::from_uid(Uid::from_raw(me().uid)) {
            assert!(
                list.contains(&format!("unix:user:{}", user.name).as_str()),
                "{list:?}"
            );
        }
        let groups = nix::unistd::getgroups().unwrap();
        for gid in groups {
            let selector = format!("unix:supplementary_gid:{gid}");
            assert!(
                list.contains(&selector.as_str()),
                "{selector} missing from {list:?}"
            );
        }
        assert!(
            list.contains(&format!("unix:uid:{}", me().uid).as_str()),
            "{list:?}"
        );
        assert!(
            list.contains(&format!("unix:gid:{}", me().gid).as_str()),
            "{list:?}"
        );
        assert!(list.contains(&path.to_string().as_str()), "{list:?}");

        let bytes = std::fs::read(&exe).unwrap();
        let expected = enclaveid_attestor::hex(&Sha256::digest(&bytes));
        assert!(
            list.contains(&format!("unix:sha256:{expected}").as_str()),
            "{list:?}"
        );
    }

    #[test]
    fn executables_are_not_read_unless_an_entry_needs_them() {
        let attestor = UnixAttestor::new([&Selector::Uid(0)], Vec::new(), 0);
        assert_eq!(attestor.note(&me()), None, "nothing noted at accept either");
        let selectors = attestor.attest_blocking(me(), None).unwrap();
        assert!(
            selectors
                .iter()
                .all(|s| !s.starts_with("unix:path:") && !s.starts_with("unix:sha256:"))
        );
    }

    #[test]
    fn a_caller_whose_uid_differs_from_the_process_is_refused() {
        let attestor = UnixAttestor::new([&Selector::SupplementaryGid(0)], Vec::new(), 0);
        let caller = Caller {
            uid: me().uid.wrapping_add(1),
            ..me()
        };
        let error = attestor
            .attest_blocking(caller, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("PID reused or credentials changed"),
            "{error}"
        );
    }

    #[test]
    fn a_vanished_or_missing_pid_is_refused_when_proc_is_needed() {
        let attestor = UnixAttestor::new(
            [&Selector::Path("/bin/x".into())],
            Vec::new(),
            crate::config::DEFAULT_MAX_EXECUTABLE_BYTES,
        );
        let error = attestor
            .attest_blocking(Caller { pid: None, ..me() }, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no PID"), "{error}");
        // PIDs are at most 2^22 on Linux.
        let gone = Caller {
            pid: Some(i32::MAX),
            ..me()
        };
        assert_eq!(attestor.note(&gone), None);
        let error = attestor
            .attest_blocking(gone, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("may have exited"), "{error}");
    }

    #[test]
    fn proc_files_are_parsed_even_with_parentheses_in_the_command_name() {
        // A fake /proc: the command name holds a `)` and a space, as a hostile workload
        // may choose, and must not shift the start-time field.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        std::fs::create_dir(&dir).unwrap();
        let stat_with = |start: u64| {
            let mut fields = vec!["S".to_owned()];
            fields.extend((4..=21).map(|n| n.to_string()));
            fields.push(start.to_string());
            format!("42 (we ird) name) {}\n", fields.join(" "))
        };
        std::fs::write(dir.join("stat"), stat_with(1000)).unwrap();
        assert_eq!(start_time(&dir).unwrap(), 1000);
        std::fs::write(dir.join("status"), "Uid:\t7\t7\t7\t7\nGroups:\t4 5\n").unwrap();
        let attestor = UnixAttestor::with_proc_root(root.path(), [&Selector::SupplementaryGid(5)]);
        let caller = Caller {
            pid: Some(42),
            uid: 7,
            gid: 7,
        };
        let selectors = attestor.attest_blocking(caller, None).unwrap();
        assert!(selectors.iter().any(|s| s == "unix:supplementary_gid:5"));
    }

    /// A fake `/proc/42` whose `exe` points at `exe`, running as uid 7.
    fn fake_process(root: &Path, exe: &Path) -> Caller {
        let dir = root.join("42");
        std::fs::create_dir_all(&dir).unwrap();
        let mut fields = vec!["S".to_owned()];
        fields.extend((4..=21).map(|n| n.to_string()));
        fields.push("1000".into());
        std::fs::write(dir.join("stat"), format!("42 (p) {}\n", fields.join(" "))).unwrap();
        std::fs::write(dir.join("status"), "Uid:\t7\t7\t7\t7\nGroups:\t\n").unwrap();
        let link = dir.join("exe");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link).unwrap();
        Caller {
            pid: Some(42),
            uid: 7,
            gid: 7,
        }
    }

    /// The attack: a process connects, forks a child that keeps the socket, and then
    /// `execve`s the binary an entry names. Its PID and start time stay; its executable
    /// does not.
    #[test]
    fn hostile_exec_after_connect_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let attacker = root.path().join("attacker");
        let named = root.path().join("named-binary");
        std::fs::write(&attacker, b"attacker").unwrap();
        std::fs::write(&named, b"the binary an entry names").unwrap();
        let path = Selector::Path(named.to_string_lossy().into_owned());
        let sha = Selector::Sha256("0".repeat(64));
        for selector in [&path, &sha] {
            let attestor = UnixAttestor::with_proc_root(root.path(), [selector]);
            let caller = fake_process(root.path(), &attacker);
            let accepted = attestor.note(&caller);
            assert!(accepted.is_some(), "noted at accept");
            // execve: same PID and start time, another executable.
            fake_process(root.path(), &named);
            let error = attestor
                .attest_blocking(caller, accepted)
                .unwrap_err()
                .to_string();
            assert!(error.contains("exec after connect"), "{selector}: {error}");
            // The process that connected as the named binary is attested as it.
            let accepted = attestor.note(&caller);
            let selectors = attestor.attest_blocking(caller, accepted).unwrap();
            if selector == &path {
                assert!(selectors.iter().any(|s| s == path.to_string()));
            }
        }
    }

    #[test]
    fn hostile_an_executable_over_the_size_limit_is_not_hashed() {
        let root = tempfile::tempdir().unwrap();
        let big = root.path().join("big");
        // A sparse file: large on paper, nothing on disk.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(8 << 30)
            .unwrap();
        let mut attestor =
            UnixAttestor::with_proc_root(root.path(), [&Selector::Sha256("0".repeat(64))]);
        if let Some(inner) = Arc::get_mut(&mut attestor.inner) {
            inner.max_executable_bytes = 1 << 20;
        }
        let caller = fake_process(root.path(), &big);
        let error = attestor
            .attest_blocking(caller, attestor.note(&caller))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("8589934592 bytes") && error.contains("1048576"),
            "{error}"
        );
    }
}
