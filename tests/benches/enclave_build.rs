//! The enclave build against today's dynamic build, in one run: binary size, idle RSS and
//! cold start to the first X.509-SVID.
//!
//! - today's: `cargo build --release -p enclaveid-cli` (glibc, dynamic, default features);
//! - the enclave build: `cargo build --profile enclave --target x86_64-unknown-linux-musl
//!   -p enclaveid-cli --no-default-features --features nsm` (static). Its size is that
//!   binary's; to run here (no NSM) the same build gets `--features nsm,fake`.
//!
//! Both run the same dev configuration (generated CA, fake attestor, one entry), started
//! one after the other, alternating. Cold start: from spawning the process to the first
//! `FetchX509SVID` message (the client dials every 0.5 ms until the socket answers).
//! Idle RSS: `VmRSS` two seconds after the first SVID.
//!
//! Run: `cargo bench -p enclaveid-tests --bench enclave_build` (it builds both binaries
//! first, a few minutes the first time; needs the musl target and `musl-gcc`).
//! `-- --quick`: fewer runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::bench::rss_kib;
use enclaveid_tests::{euid, fetch_x509};

const MUSL: &str = "x86_64-unknown-linux-musl";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--locked", "--quiet"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build {args:?} failed");
}

/// Builds one binary and copies it aside (the next build overwrites it).
fn build(name: &str, args: &[&str], built: &str, dir: &Path) -> PathBuf {
    cargo_build(args);
    let to = dir.join(name);
    std::fs::copy(workspace().join(built), &to).unwrap();
    to
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().unwrap();
    let enclave_args = [
        "--profile",
        "enclave",
        "--target",
        MUSL,
        "-p",
        "enclaveid-cli",
        "--no-default-features",
    ];
    let built = format!("target/{MUSL}/enclave/enclaveid");
    let shipped = build(
        "enclave-nsm",
        &[&enclave_args[..], &["--features", "nsm"]].concat(),
        &built,
        dir.path(),
    );
    let static_bin = build(
        "enclave-nsm-fake",
        &[&enclave_args[..], &["--features", "nsm,fake"]].concat(),
        &built,
        dir.path(),
    );
    let dynamic = build(
        "today",
        &["--release", "-p", "enclaveid-cli"],
        "target/release/enclaveid",
        dir.path(),
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();

    let runs = if quick { 5 } else { 30 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut starts, mut rss) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for run in 0..runs {
        for (i, bin) in [&static_bin, &dynamic].into_iter().enumerate() {
            let (start, idle) = runtime.block_on(cold_start(bin, dir.path(), run < 5));
            starts[i].push(start);
            if let Some(idle) = idle {
                rss[i].push(idle);
            }
        }
    }
    let median_ms = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let median_kib = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    println!(
        "The enclave build (static, musl, profile `enclave`) against today's dynamic release build; {runs} cold starts each, alternating"
    );
    println!();
    println!("| measure | enclave build | today's dynamic build | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    let (s, d) = (size(&shipped), size(&dynamic));
    println!(
        "| binary size | {:.2} MiB ({s} B; `nsm` only) | {:.2} MiB ({d} B) | {:.2}x | under 10 MiB |",
        mib(s),
        mib(d),
        s as f64 / d as f64
    );
    let (a, b) = (median_kib(&mut rss[0]), median_kib(&mut rss[1]));
    println!(
        "| idle RSS after the first SVID (median) | {:.1} MiB | {:.1} MiB | {:.2}x | ≤ 0.8x |",
        a as f64 / 1024.0,
        b as f64 / 1024.0,
        a as f64 / b as f64
    );
    let (a, b) = (median_ms(&mut starts[0]), median_ms(&mut starts[1]));
    println!(
        "| cold start to the first SVID, dev (median) | {a:.1} ms | {b:.1} ms | {:.2}x | under 50 ms |",
        a / b
    );
}

/// Starts `bin` with a dev configuration; the time to its first SVID, and its idle RSS
/// when `measure_rss`.
async fn cold_start(bin: &Path, dir: &Path, measure_rss: bool) -> (Duration, Option<u64>) {
    let run = tempfile::tempdir_in(dir).unwrap();
    let socket = run.path().join("agent.sock");
    let config = run.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nsocket_path = \"{}\"\n[upstream]\nkind = \"dev\"\n\
             [attestor]\nkind = \"fake\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/me\"\n\
             selectors = [\"unix:uid:{}\"]\n",
            socket.display(),
            euid()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child: Child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let elapsed = loop {
        if socket.exists()
            && let Ok(response) = fetch_x509(&socket).await
            && !response.svids.is_empty()
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} did not start",
            bin.display()
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let rss = if measure_rss {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(rss_kib(child.id()))
    } else {
        None
    };
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, rss)
}
