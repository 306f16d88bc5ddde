//! Fault and soak runs: the agent over a long time and through faults, with every SVID a
//! workload receives checked. Not part of CI (the soak alone takes 20 minutes).
//!
//! - `soak`: TTL 5 s, N watchers (500) each on its own connection and a churning client
//!   (a new connection every 100 ms) for M minutes (20); the agent's RSS and open
//!   descriptors sampled every 10 s, and their slope reported.
//! - `host`: the `kms` upstream (fake KMS, moto S3, a real `enclaveid host`); the host is
//!   killed (SIGKILL) right after it served a sync's first object, and restarted, ten
//!   times; then the material is revoked.
//! - `clock`: the agent under libfaketime; its wall clock stepped forward past its SVIDs'
//!   notAfter, and back.
//! - `write`: `enclaveid api fetch x509 --write DIR` killed (SIGKILL) at random points,
//!   300 times.
//!
//! Every phase fails the run if a workload ever received an SVID outside its validity (on
//! the agent's clock) or one that was revoked, or if the agent did not recover by itself.
//!
//! Run: `cargo bench -p enclaveid-tests --bench soak` (all), or
//! `cargo bench -p enclaveid-tests --bench soak -- --only host,clock --minutes 2 --watchers 100`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use enclaveid_tests::bench::rss_kib;
use enclaveid_tests::kms_world::{ADMITTED_PCR0, World};
use enclaveid_tests::pca::Profile;
use enclaveid_tests::{
    AgentProcess, enclaveid_bin, euid, fetch_x509, raw_client, wait_for_x509svid, with_header,
};
use enclaveid_workload_api::proto::{X509svidRequest, X509svidResponse};

struct Settings {
    minutes: u64,
    watchers: usize,
    only: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let settings = Settings {
        minutes: value("--minutes").map_or(20, |v| v.parse().unwrap()),
        watchers: value("--watchers").map_or(500, |v| v.parse().unwrap()),
        only: value("--only").map_or_else(
            || vec!["soak".into(), "host".into(), "clock".into(), "write".into()],
            |v| v.split(',').map(str::to_owned).collect(),
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failed = Vec::new();
    for phase in &settings.only {
        println!("== {phase}");
        let result = runtime.block_on(async {
            match phase.as_str() {
                "soak" => soak(&settings).await,
                "host" => host_killed_mid_sync().await,
                "clock" => clock_stepped().await,
                "write" => writes_killed().await,
                other => Err(format!("unknown phase {other}")),
            }
        });
        if let Err(why) = result {
            println!("FAILED {phase}: {why}");
            failed.push(phase.clone());
        }
    }
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

// === What workloads receive ===

/// Checks every SVID workloads receive against the agent's clock: the real clock plus
/// `offset` seconds (the libfaketime step in force). Around a step, messages already in
/// flight were sent on the other side of it: an SVID received within
/// [`EXPIRY_TRANSITION`] of a step may be unexpired on either side, and one received
/// within [`START_TRANSITION`] may have started on either side (the agent re-mints within
/// a second of noticing a step; until then its SVID from before a backward step starts
/// in the future, which no clock change can avoid).
#[derive(Default)]
struct Checker {
    received: AtomicU64,
    violations: AtomicU64,
    offset: AtomicI64,
    previous_offset: AtomicI64,
    /// Real-clock milliseconds since the epoch of the last step.
    stepped_at_ms: AtomicU64,
    first_violation: std::sync::Mutex<Option<String>>,
}

const EXPIRY_TRANSITION: Duration = Duration::from_millis(300);
const START_TRANSITION: Duration = Duration::from_millis(2000);

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn shifted(t: SystemTime, seconds: i64) -> SystemTime {
    let by = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 { t + by } else { t - by }
}

/// The validity of the first certificate of a concatenated DER chain.
fn validity(chain: &[u8]) -> (SystemTime, SystemTime) {
    let (_, cert) = x509_parser::parse_x509_certificate(chain).unwrap();
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().unsigned_abs())
    };
    (
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    )
}

impl Checker {
    fn step(&self, offset: i64) {
        self.previous_offset
            .store(self.offset.load(Ordering::SeqCst), Ordering::SeqCst);
        self.stepped_at_ms
            .store(unix_ms(SystemTime::now()), Ordering::SeqCst);
        self.offset.store(offset, Ordering::SeqCst);
    }

    /// Whether every SVID of `response` is valid at the agent's time now.
    fn check(&self, response: &X509svidResponse, what: &str) -> bool {
        let real = SystemTime::now();
        let since_step = Duration::from_millis(
            unix_ms(real).saturating_sub(self.stepped_at_ms.load(Ordering::SeqCst)),
        );
        let current = self.offset.load(Ordering::SeqCst);
        let previous = self.previous_offset.load(Ordering::SeqCst);
        let offsets = |transition: Duration| {
            if since_step < transition {
                vec![current, previous]
            } else {
                vec![current]
            }
        };
        let (expiry_offsets, start_offsets) =
            (offsets(EXPIRY_TRANSITION), offsets(START_TRANSITION));
        let mut all_valid = true;
        for svid in &response.svids {
            self.received.fetch_add(1, Ordering::Relaxed);
            let (not_before, not_after) = validity(&svid.x509_svid);
            let valid = expiry_offsets
                .iter()
                .any(|offset| shifted(real, *offset) < not_after)
                && start_offsets
                    .iter()
                    .any(|offset| not_before <= shifted(real, *offset));
            if !valid {
                all_valid = false;
                self.violations.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_violation.lock().unwrap();
                first.get_or_insert_with(|| {
                    format!(
                        "{what}: {} valid {not_before:?}..{not_after:?} received at {real:?} (offset {current} s, {since_step:?} after a step)",
                        svid.spiffe_id,
                    )
                });
            }
        }
        all_valid
    }

    fn verdict(&self) -> Result<u64, String> {
        let received = self.received.load(Ordering::Relaxed);
        match self.violations.load(Ordering::Relaxed) {
            0 => Ok(received),
            n => Err(format!(
                "{n} of {received} SVIDs received outside their validity; first: {}",
                self.first_violation
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default()
            )),
        }
    }
}

/// A workload watching `FetchX509SVID` on its own connection, checking each message; it
/// reconnects when the stream ends (the agent drained it or withdrew everything).
fn watch(socket: PathBuf, checker: Arc<Checker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut client = raw_client(&socket).await;
            if let Ok(response) = client.fetch_x509svid(with_header(X509svidRequest {})).await {
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    checker.check(&message, "a watcher");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of `(minutes, value)` points, per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn dev_config(ttl: &str, extra: &str) -> String {
    format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"{ttl}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n{extra}\
         [[entry]]\nspiffe_id = \"spiffe://example.org/soak\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    )
}

// === Phases ===

async fn soak(settings: &Settings) -> Result<(), String> {
    // All watchers are one uid: its limits are raised to hold them.
    let agent = AgentProcess::start_quiet(&dev_config(
        "5s",
        "[limits]\nmax_connections_per_uid = 4096\nmax_connections = 4096\n",
    ));
    let pid = agent.pid();
    let checker = Arc::new(Checker::default());
    let watchers: Vec<_> = (0..settings.watchers)
        .map(|_| watch(agent.socket().to_owned(), checker.clone()))
        .collect();
    let churn = {
        let (socket, checker) = (agent.socket().to_owned(), checker.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(response) = fetch_x509(&socket).await {
                    checker.check(&response, "a new connection");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    println!(
        "TTL 5 s, {} watchers, a new connection every 100 ms, {} min; RSS and descriptors every 10 s",
        settings.watchers, settings.minutes
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(settings.minutes * 60) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let (rss, fds) = (rss_kib(pid), open_fds(pid));
        println!(
            "  {minutes:5.2} min  rss {rss:6} KiB  fds {fds:5}  svids received {}",
            checker.received.load(Ordering::Relaxed)
        );
        samples.push((minutes, rss as f64, fds as f64));
    }
    churn.abort();
    for watcher in &watchers {
        watcher.abort();
    }
    // The first minute is warm-up (allocator arenas, connection set-up).
    let steady: Vec<_> = samples.iter().filter(|(m, ..)| *m >= 1.0).collect();
    let rss_points: Vec<_> = steady.iter().map(|(m, r, _)| (*m, *r)).collect();
    let fd_points: Vec<_> = steady.iter().map(|(m, _, f)| (*m, *f)).collect();
    let (first, last) = (steady.first(), steady.last());
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "RSS slope {:+.1} KiB/min ({} -> {} KiB after the first minute); descriptors slope {:+.2}/min ({} -> {})",
            slope(&rss_points),
            first.1,
            last.1,
            slope(&fd_points),
            first.2,
            last.2
        );
    }
    let received = checker.verdict()?;
    println!("{received} SVIDs received, every one within its validity");
    Ok(())
}

async fn host_killed_mid_sync() -> Result<(), String> {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(
        Profile::Ca {
            trust_domain_uri: "spiffe://example.org",
        },
        Duration::from_secs(86_400),
    );
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    world.start_host();
    let agent = AgentProcess::start_quiet(&world.agent_config(
        ADMITTED_PCR0,
        &[("spiffe://example.org/gateway", "1m")],
        "",
    ));
    wait_for_x509svid(&agent, Duration::from_secs(30)).await;
    let checker = Arc::new(Checker::default());
    let watcher = watch(agent.socket().to_owned(), checker.clone());
    let synced = |agent: &AgentProcess| {
        agent
            .stderr_text()
            .matches("key material released by KMS and checked")
            .count()
    };
    let mut recoveries = Vec::new();
    for round in 0..10 {
        // Kill the host right after it served the first object of a sync: the agent is
        // then waiting for the others, or for KMS through the tunnel.
        let served_before = world.host_log().matches("served").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while world.host_log().matches("served").count() == served_before {
            if Instant::now() > deadline {
                return Err(format!("round {round}: no sync reached the host"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        world.stop_host();
        let syncs = synced(&agent);
        tokio::time::sleep(Duration::from_millis(500 + 250 * round)).await;
        let restarted = Instant::now();
        world.start_host();
        let deadline = Instant::now() + Duration::from_secs(60);
        while synced(&agent) == syncs {
            if Instant::now() > deadline {
                return Err(format!("round {round}: no sync within 60 s of the restart"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recoveries.push(restarted.elapsed());
        let served = fetch_x509(agent.socket())
            .await
            .map_err(|s| format!("round {round}: not served after recovery: {s:?}"))?;
        checker.check(&served, "after a host restart");
    }
    let failed = agent
        .stderr_text()
        .matches("key material sync failed")
        .count();
    println!(
        "10 host kills mid-sync: {failed} syncs failed, each recovered without a restart in at most {:?} (median {:?})",
        recoveries.iter().max().unwrap(),
        {
            let mut sorted = recoveries.clone();
            sorted.sort();
            sorted[sorted.len() / 2]
        }
    );

    // Revoked: withdrawn, and never served again.
    world
        .publish(world.material(&ca), world.pca.crl(&[&ca.serial]))
        .await;
    let revoked = Instant::now();
    loop {
        match fetch_x509(agent.socket()).await {
            Err(status) if status.code() == tonic::Code::PermissionDenied => break,
            Err(status) => return Err(format!("unexpected answer after revocation: {status:?}")),
            Ok(_) if revoked.elapsed() > Duration::from_secs(30) => {
                return Err("still served 30 s after the revocation was published".into());
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let withdrawn_after = revoked.elapsed();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(15) {
        if fetch_x509(agent.socket()).await.is_ok() {
            return Err("revoked material served again".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.abort();
    let received = checker.verdict()?;
    println!(
        "revoked: withdrawn {withdrawn_after:?} after the CRL was published (resync 5 s), not served again in 15 s; {received} SVIDs received, every one within its validity"
    );
    Ok(())
}

/// libfaketime, as Debian installs it.
fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

async fn clock_stepped() -> Result<(), String> {
    let Some(library) = libfaketime() else {
        println!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return Ok(());
    };
    let work = tempfile::tempdir().unwrap();
    let offset_file = work.path().join("faketime");
    std::fs::write(&offset_file, "+0").unwrap();
    let env = [
        format!("LD_PRELOAD={}", library.display()),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset_file.display()),
        "FAKETIME_NO_CACHE=1".to_owned(),
        // Timers run on the monotonic clock, which a wall-clock step does not move.
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_owned(),
    ];
    let mut prefix = vec!["env"];
    prefix.extend(env.iter().map(String::as_str));
    let agent = AgentProcess::start_under(&prefix, &dev_config("1h", ""));
    let checker = Arc::new(Checker::default());
    let watcher = watch(agent.socket().to_owned(), checker.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut report = Vec::new();
    for (label, spec, offset) in [
        ("forward 2 h (past the SVIDs' notAfter)", "+2h", 7200),
        ("back to the real time", "+0", 0),
    ] {
        checker.step(offset);
        std::fs::write(&offset_file, spec).unwrap();
        let stepped = Instant::now();
        // Until a new connection gets an SVID valid at the agent's new time; every answer
        // before that must be a refusal or a valid SVID, never an expired one.
        loop {
            if let Ok(response) = fetch_x509(agent.socket()).await
                && checker.check(&response, label)
                && !response.svids.is_empty()
            {
                // Valid at the agent's new time, and minted after the step by it.
                let (not_before, not_after) = validity(&response.svids[0].x509_svid);
                let now = shifted(SystemTime::now(), offset);
                if not_before <= now
                    && now < not_after
                    && not_before >= now - Duration::from_secs(120)
                {
                    break;
                }
            }
            if stepped.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "{label}: no SVID valid at the new time within 30 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.push(format!("{label}: re-minted in {:?}", stepped.elapsed()));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    watcher.abort();
    let received = checker.verdict()?;
    for line in report {
        println!("{line}");
    }
    println!("{received} SVIDs received, every one within its validity on the agent's clock");
    Ok(())
}

async fn writes_killed() -> Result<(), String> {
    let agent = AgentProcess::start_quiet(&dev_config("5s", ""));
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("svids");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut partial, mut mismatched, mut completed) = (0, 0, 0);
    for round in 0..300 {
        let mut child = std::process::Command::new(enclaveid_bin())
            .args(["api", "fetch", "x509", "--write"])
            .arg(&dir)
            .arg("--socket")
            .arg(agent.socket())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(next() % 30_000));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            completed += 1;
        }
        match check_written(&dir) {
            Ok(true) => {}
            Ok(false) => mismatched += 1,
            Err(why) => {
                partial += 1;
                println!("  round {round}: {why}");
            }
        }
    }
    let temporaries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    let leftovers = temporaries(&dir);
    // As if a minute had passed: the next write removes what killed writers left.
    let minutes_ago = SystemTime::now() - Duration::from_secs(120);
    for path in &leftovers {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(minutes_ago).unwrap();
    }
    // Recovery: the next write completes, and the set is whole and consistent.
    let status = std::process::Command::new(enclaveid_bin())
        .args(["api", "fetch", "x509", "--write"])
        .arg(&dir)
        .arg("--socket")
        .arg(agent.socket())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let whole = status.success() && check_written(&dir) == Ok(true);
    let remaining = temporaries(&dir).len();
    println!(
        "300 writes killed at random (0-30 ms; {completed} finished first): {partial} partial files, \
         {mismatched} times a certificate beside another write's key, {} temporary files left \
         ({remaining} once a minute old and another write came); the next write {}",
        leftovers.len(),
        if whole {
            "left a whole, consistent set"
        } else {
            "FAILED"
        }
    );
    if partial > 0 || !whole || remaining > 0 {
        return Err("a partial file, no recovery, or abandoned temporary files kept".into());
    }
    Ok(())
}

/// Every file in `dir` parses whole (`Err` otherwise); `Ok(false)` when the certificate
/// and the key present come from different writes.
fn check_written(dir: &Path) -> Result<bool, String> {
    let read = |name: &str| std::fs::read(dir.join(name)).ok();
    let cert = read("svid.0.pem");
    let key = read("svid.0.key");
    if let Some(bundle) = read("bundle.0.pem") {
        parse_certs(&bundle).map_err(|e| format!("bundle.0.pem: {e}"))?;
    }
    let cert = match cert {
        Some(cert) => Some(parse_certs(&cert).map_err(|e| format!("svid.0.pem: {e}"))?),
        None => None,
    };
    let key = match key {
        Some(key) => {
            let block = pem::parse(&key).map_err(|e| format!("svid.0.key: {e}"))?;
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                block.contents(),
            )
            .map_err(|e| format!("svid.0.key: {e}"))?;
            Some(
                aws_lc_rs::signature::KeyPair::public_key(&pair)
                    .as_ref()
                    .to_vec(),
            )
        }
        None => None,
    };
    Ok(match (cert, key) {
        (Some(chain), Some(public)) => {
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
            leaf.public_key().subject_public_key.data.as_ref() == public.as_slice()
        }
        _ => true,
    })
}

fn parse_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    if blocks.is_empty() {
        return Err("no PEM block".into());
    }
    blocks
        .into_iter()
        .map(|block| {
            x509_parser::parse_x509_certificate(block.contents())
                .map(|_| block.contents().to_vec())
                .map_err(|e| e.to_string())
        })
        .collect()
}
