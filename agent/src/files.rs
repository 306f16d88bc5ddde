//! File output (`[[files]]`), for programs that read their certificate from files (nginx,
//! a Python server), as spiffe-helper does for SPIRE, but inside the agent: no second
//! process, no Workload API round trip, and the agent's own identities only. A block
//! writes an identity's X.509-SVID (and JWT-SVIDs), or an `[[acm_certificate]]`'s
//! certificate, key and Private CA root.
//!
//! Each write is a new generation directory, `DIR/.enclaveid-gen-N/`, holding the chain,
//! the key and the bundle (and a token per JWT audience), synced, then made current by
//! renaming one symlink, `DIR/current -> .enclaveid-gen-N`. `DIR/NAME` are symlinks to
//! `current/NAME`, made once. A reader never sees a new certificate beside an old key:
//! the files of one generation never change, the switch is one rename, and the previous
//! generation stays until the next switch, so a reader that resolved `current` just
//! before it still reads one whole generation. A failed write removes its own generation
//! and leaves `current` where it was.
//!
//! After each switch the block's `cmd` runs, or the process in `pid_file` gets
//! `renew_signal` (nginx reloads its certificates on `SIGHUP`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use enclaveid_workload_api::Snapshot;
use tokio::sync::watch;

use crate::acm::AcmCertificates;
use crate::config::{FileOutput, FileSource};

/// Generation directories start with this.
const GENERATION_PREFIX: &str = ".enclaveid-gen-";
/// How long `cmd` may run before it is left to itself.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before a failed write is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Why a generation could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// A file or directory could not be written.
    #[error("{path}")]
    Write {
        /// What was being written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SVID's chain or bundle does not parse (the agent checked it when it was
    /// issued; this would be a bug).
    #[error("the certificates to write")]
    Certificate(#[from] enclaveid_checks::certs::CertificateError),
    /// A JWT-SVID could not be issued.
    #[error("a JWT-SVID for audience {audience:?}: {why}")]
    Jwt {
        /// The audience.
        audience: String,
        /// Why.
        why: String,
    },
}

/// What one block wrote last.
#[derive(Default)]
struct Written {
    /// The chain written (to notice a new SVID).
    chain: Vec<u8>,
    bundle: Vec<u8>,
    /// The tokens written, and when each is due for renewal.
    tokens: Vec<(String, SystemTime)>,
    generation: u64,
    /// When to try again after a failure.
    retry_at: Option<SystemTime>,
    /// Why the last write failed, for health.
    failure: Option<String>,
}

/// Writes every block's files on each change until `shutdown`.
pub(crate) async fn run(
    outputs: Vec<FileOutput>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut acm: watch::Receiver<Arc<AcmCertificates>>,
    problems: watch::Sender<Option<String>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if outputs.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    let mut written: HashMap<usize, Written> = HashMap::new();
    // Without [[acm_certificate]] nothing ever sends on `acm`: its end is not ours.
    let mut acm_open = true;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let certificates = acm.borrow_and_update().clone();
        let now = SystemTime::now();
        let mut next = now + Duration::from_secs(3600);
        for (i, output) in outputs.iter().enumerate() {
            let state = written.entry(i).or_default();
            if let Some(at) = write_if_changed(output, &snapshot, &certificates, state, now).await {
                next = next.min(at);
            }
        }
        let failures: Vec<String> = outputs
            .iter()
            .enumerate()
            .filter_map(|(i, output)| {
                let why = written.get(&i)?.failure.as_ref()?;
                Some(format!(
                    "[[files]] {}: the last write failed, the previous files stay: {why}",
                    output.dir.display()
                ))
            })
            .collect();
        problems.send_if_modified(|current| {
            let next = (!failures.is_empty()).then(|| failures.join("; "));
            let changed = *current != next;
            *current = next;
            changed
        });
        let pause = next.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            changed = acm.changed(), if acm_open => acm_open = changed.is_ok(),
            () = tokio::time::sleep(pause.max(Duration::from_millis(100))) => {}
            () = &mut shutdown => return,
        }
    }
}

/// Writes `output`'s generation when its SVID, bundle or a token changed or is due;
/// returns when to look again for this block.
async fn write_if_changed(
    output: &FileOutput,
    snapshot: &Snapshot,
    certificates: &AcmCertificates,
    state: &mut Written,
    now: SystemTime,
) -> Option<SystemTime> {
    // What the block writes: the chain, the key, the bundle, and the identity its tokens
    // are issued for (none for an ACM certificate).
    let (chain, key, bundle, identity) = match &output.source {
        FileSource::Svid(spiffe_id) => {
            let identity = snapshot
                .identities
                .iter()
                .find(|i| i.spiffe_id == *spiffe_id && i.svid.is_some())?;
            let svid = identity.svid.as_ref()?;
            let bundle = snapshot
                .bundles
                .get(&spiffe_id.trust_domain().id_string())
                .map(|b| b.to_vec())
                .unwrap_or_default();
            (
                svid.cert_chain_der(),
                svid.private_key_der(),
                bundle,
                Some(identity),
            )
        }
        FileSource::Acm(arn) => {
            let served = certificates.get(arn)?;
            (
                served.chain_der.as_slice(),
                served.key_der.as_slice(),
                served.bundle_der.clone(),
                None,
            )
        }
    };
    let tokens_due = state.tokens.len() != output.jwt_audiences.len()
        || state.tokens.iter().any(|(_, renew_at)| *renew_at <= now);
    let changed = state.chain != chain || state.bundle != bundle || tokens_due;
    if !changed {
        return state.tokens.iter().map(|(_, at)| *at).min();
    }
    if state.retry_at.is_some_and(|at| at > now) {
        return state.retry_at;
    }
    let mut tokens = Vec::with_capacity(output.jwt_audiences.len());
    for audience in &output.jwt_audiences {
        let token = match (snapshot.jwt_issuer.as_deref(), identity) {
            (Some(issuer), Some(identity)) => issuer
                .issue(
                    &identity.spiffe_id,
                    std::slice::from_ref(audience),
                    identity.jwt_ttl,
                    now,
                )
                .await
                .map_err(|why| FilesError::Jwt {
                    audience: audience.clone(),
                    why,
                }),
            _ => Err(FilesError::Jwt {
                audience: audience.clone(),
                why: "no JWT-SVID signing key".into(),
            }),
        };
        match token {
            Ok(token) => tokens.push((audience.clone(), token)),
            Err(error) => return Some(failed(output, state, &error, now)),
        }
    }
    let generation = state.generation + 1;
    let files = Generation {
        chain,
        key,
        bundle: &bundle,
        tokens: &tokens,
    };
    match write_generation(output, generation, &files) {
        Ok(()) => {
            tracing::info!(
                source = %output.source,
                dir = %output.dir.display(),
                generation,
                "files written"
            );
            state.chain = chain.to_vec();
            state.bundle = bundle;
            state.generation = generation;
            state.retry_at = None;
            state.failure = None;
            state.tokens = tokens
                .iter()
                .map(|(audience, token)| {
                    let ttl = identity.map_or(Duration::from_secs(60), |i| i.jwt_ttl);
                    let renew =
                        enclaveid_workload_api::jwt::renew_time(token).unwrap_or(now + ttl / 2);
                    (audience.clone(), renew)
                })
                .collect();
            notify(output).await;
            state.tokens.iter().map(|(_, at)| *at).min()
        }
        Err(error) => Some(failed(output, state, &error, now)),
    }
}

fn failed(
    output: &FileOutput,
    state: &mut Written,
    error: &FilesError,
    now: SystemTime,
) -> SystemTime {
    tracing::error!(
        error = %enclaveid_checks::Chain(error),
        dir = %output.dir.display(),
        retry_in = ?RETRY,
        "could not write the files; the previous ones stay"
    );
    let at = now + RETRY;
    state.retry_at = Some(at);
    state.failure = Some(enclaveid_checks::Chain(error).to_string());
    at
}

/// The contents of one generation.
struct Generation<'a> {
    chain: &'a [u8],
    key: &'a [u8],
    bundle: &'a [u8],
    tokens: &'a [(String, String)],
}

/// The file name of the token for `audience`.
pub(crate) fn token_file_name(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("jwt_{safe}.token")
}

/// Writes generation `n` and makes it current.
fn write_generation(output: &FileOutput, n: u64, files: &Generation<'_>) -> Result<(), FilesError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Write { path, source }
    };
    let dir = &output.dir;
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    // A new name each run of the agent as well: pid and time.
    let name = format!(
        "{GENERATION_PREFIX}{}-{}-{n}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let generation = dir.join(&name);
    let result = (|| {
        std::fs::create_dir(&generation).map_err(err(&generation))?;
        std::fs::set_permissions(&generation, std::fs::Permissions::from_mode(0o755))
            .map_err(err(&generation))?;
        let pem = |what: &str, der: &[u8]| -> Result<String, FilesError> {
            let certs = enclaveid_checks::certs::split_der(der, what)?;
            Ok(certs
                .iter()
                .map(|c| enclaveid_checks::secret_pem::encode("CERTIFICATE", c).to_string())
                .collect())
        };
        let chain = pem("chain", files.chain)?;
        let bundle = pem("bundle", files.bundle)?;
        let key = enclaveid_checks::secret_pem::encode("PRIVATE KEY", files.key);
        let mut written = vec![
            (&output.svid_file_name, chain.as_bytes(), output.cert_mode),
            (&output.svid_key_file_name, key.as_bytes(), output.key_mode),
            (
                &output.svid_bundle_file_name,
                bundle.as_bytes(),
                output.cert_mode,
            ),
        ];
        let token_names: Vec<String> = files
            .tokens
            .iter()
            .map(|(a, _)| token_file_name(a))
            .collect();
        for ((_, token), name) in files.tokens.iter().zip(&token_names) {
            written.push((name, token.as_bytes(), output.key_mode));
        }
        for (name, bytes, mode) in &written {
            let path = generation.join(name);
            write_new(&path, bytes, *mode, output.owner).map_err(err(&path))?;
        }
        if let Some((uid, gid)) = output.owner {
            chown(&generation, uid, gid).map_err(err(&generation))?;
        }
        std::fs::File::open(&generation)
            .and_then(|d| d.sync_all())
            .map_err(err(&generation))?;
        // The switch: one rename of a symlink.
        let current = dir.join("current");
        let staged = dir.join(format!("{GENERATION_PREFIX}current-{n}"));
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(&name, &staged).map_err(err(&staged))?;
        std::fs::rename(&staged, &current).map_err(err(&current))?;
        // Stable names, made once: DIR/NAME -> current/NAME.
        for (name, _, _) in &written {
            let link = dir.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("current").join(name), &link)
                    .map_err(err(&link))?;
            }
        }
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err(dir))?;
        Ok(name.clone())
    })();
    match result {
        Ok(current) => {
            remove_old_generations(dir, &current);
            Ok(())
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&generation);
            Err(error)
        }
    }
}

/// Creates `path` (which must not exist) with `mode` from the start, writes and syncs it.
fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have narrowed the mode; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid)?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(std::io::Error::from)
}

/// Removes generations other than `current` and the one before it.
fn remove_old_generations(dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut generations: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(GENERATION_PREFIX)
                && !name.starts_with(&format!("{GENERATION_PREFIX}current-"))
                && name != current
        })
        .filter_map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, e.path()))
        })
        .collect();
    generations.sort();
    // Keep the newest of the others: the previous generation.
    generations.pop();
    for (_, path) in generations {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Runs `cmd` or signals `pid_file`'s process, as the block says.
async fn notify(output: &FileOutput) {
    if let Some((cmd, args)) = &output.cmd {
        let run = tokio::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false)
            .status();
        match tokio::time::timeout(CMD_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                tracing::warn!(cmd = %cmd.display(), %status, "the command after writing the files failed")
            }
            Ok(Err(error)) => {
                tracing::warn!(cmd = %cmd.display(), %error, "the command after writing the files could not start")
            }
            Err(_) => {
                tracing::warn!(cmd = %cmd.display(), timeout = ?CMD_TIMEOUT, "the command after writing the files is still running; not waited for")
            }
        }
    }
    if let Some((pid_file, signal)) = &output.signal {
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0);
        match pid {
            Some(pid) => {
                if let Err(error) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal)
                {
                    tracing::warn!(pid, %signal, %error, "could not signal the process after writing the files");
                }
            }
            None => tracing::warn!(
                pid_file = %pid_file.display(),
                "no process ID in the pid file; nothing signalled"
            ),
        }
    }
}
