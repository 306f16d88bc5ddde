//! `enclaveid proxy` against ghostunnel v1.8.4 (built from the Go module proxy,
//! `tests/interop/ghostunnel`) and against a plain TCP relay (the floor: `enclaveid host
//! --relay-only`, the same byte pump without TLS), in one run on one machine. Each path is
//! a client-side and a server-side hop in front of one target; both proxies take the same
//! SVIDs from the same two agents (one identity each, under one CA) over the Workload API.
//!
//! Measured per path:
//! - throughput: one connection uploads BYTES (1 GiB; 64 MiB with `--quick`), the target
//!   acknowledges the last byte (MB/s);
//! - 1 KiB request/response over one kept connection, p50/p99;
//! - new connections per second, each a full handshake and one 1 KiB exchange;
//! - RSS of the two proxy processes with 1,000 connections open (100 with `--quick`).
//!
//! Run: `cargo bench -p enclaveid-tests --bench proxy` (`-- --quick` for a smoke run).
//! Needs Go to build ghostunnel on first use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::bench::{p50_p99, rss_kib};
use enclaveid_tests::pca::TestPca;
use enclaveid_tests::spire::{free_port, go_build};
use enclaveid_tests::{AgentProcess, enclaveid_bin, euid};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const INFERENCE: &str = "spiffe://example.org/inference";
const GATEWAY: &str = "spiffe://example.org/gateway";
const MESSAGE: usize = 1024;

/// A process killed on drop.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &Path, args: &[String], env: &[(&str, String)], port: u16) -> Spawned {
    let mut command = Command::new(program);
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-proxy-{port}.log"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = Spawned(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {port}",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ghostunnel listens before its first SVID arrives: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn ghostunnel() -> PathBuf {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/ghostunnel");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ghostunnel");
    go_build(
        "ghostunnel v1.8.4",
        &module,
        &out,
        &["github.com/ghostunnel/ghostunnel"],
    );
    out
}

fn agent(dir: &Path, id: &str) -> AgentProcess {
    AgentProcess::start_quiet(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"1h\"\n\
         [upstream]\nkind = \"dev\"\ncert_path = \"{d}/ca.pem\"\nkey_path = \"{d}/ca.key\"\nbundle_path = \"{d}/root.pem\"\n\
         [attestor]\nkind = \"fake\"\n[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n\
         [limits]\nmax_connections = 4096\n",
        euid(),
        d = dir.display()
    ))
}

/// The target: the first byte chooses `T` (read the announced length, answer 8 bytes: how
/// many were read) or `E` (echo 1 KiB messages until the end).
async fn target() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if stream.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                if mode[0] == b'T' {
                    // Announced length first: ghostunnel does not pass half-close on.
                    let mut len = [0u8; 8];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let (want, mut total) = (u64::from_be_bytes(len), 0u64);
                    while total < want {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = stream.write_all(&total.to_be_bytes()).await;
                } else {
                    let mut message = [0u8; MESSAGE];
                    while stream.read_exact(&mut message).await.is_ok() {
                        if stream.write_all(&message).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

async fn throughput(port: u16, bytes: u64) -> f64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    stream.write_all(b"T").await.unwrap();
    stream.write_all(&bytes.to_be_bytes()).await.unwrap();
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        stream.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    let mut ack = [0u8; 8];
    stream.read_exact(&mut ack).await.unwrap();
    assert_eq!(u64::from_be_bytes(ack), bytes);
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

async fn echo_stream(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"E").await.unwrap();
    exchange(&mut stream).await;
    stream
}

async fn exchange(stream: &mut TcpStream) {
    let message = [0x42u8; MESSAGE];
    stream.write_all(&message).await.unwrap();
    let mut back = [0u8; MESSAGE];
    stream.read_exact(&mut back).await.unwrap();
}

async fn request_response(port: u16, samples: usize) -> (Duration, Duration) {
    let mut stream = echo_stream(port).await;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 100 {
        let started = Instant::now();
        exchange(&mut stream).await;
        if i >= 100 {
            times.push(started.elapsed());
        }
    }
    p50_p99(times)
}

async fn connections_per_second(port: u16, n: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        drop(echo_stream(port).await);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

struct Path3 {
    name: &'static str,
    entry: u16,
    pids: Vec<u32>,
    _processes: Vec<Spawned>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // 1,000 connections through two hops: 4,000 descriptors in the proxies, 1,000 here.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(quick));
}

async fn run(quick: bool) {
    let (bytes, samples, handshakes, open) = if quick {
        (64u64 << 20, 300, 100, 100)
    } else {
        (1u64 << 30, 3000, 1000, 1000)
    };
    let ghostunnel = tokio::task::spawn_blocking(ghostunnel).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = TestPca::new("bench root");
    let (_, sub) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.path().join("ca.pem"), &sub.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.key"), &sub.key_pem).unwrap();
    std::fs::write(dir.path().join("root.pem"), &root.root_pem).unwrap();
    let inference = agent(dir.path(), INFERENCE);
    let gateway = agent(dir.path(), GATEWAY);
    let target = target().await;
    let tcp = |port: u16| format!("tcp://127.0.0.1:{port}");
    let plain = |port: u16| format!("127.0.0.1:{port}");
    let limit = (open + 100).to_string();

    let mut paths = Vec::new();
    {
        let (inner, outer) = (free_port(), free_port());
        let relay = spawn(
            enclaveid_bin(),
            &[
                "host".into(),
                "--relay-only".into(),
                "--relay-max-connections".into(),
                limit.clone(),
                "--route".into(),
                format!("{}={}", tcp(outer), tcp(inner)),
                "--route".into(),
                format!("{}={}", tcp(inner), tcp(target)),
            ],
            &[("ENCLAVEID_LOG", "error".into())],
            outer,
        );
        paths.push(Path3 {
            name: "plain TCP relay (floor)",
            entry: outer,
            pids: vec![relay.0.id()],
            _processes: vec![relay],
        });
    }
    {
        let (server_port, client_port) = (free_port(), free_port());
        let common = |agent: &AgentProcess| {
            vec![
                "--socket".to_owned(),
                agent.socket().display().to_string(),
                "--max-connections".into(),
                limit.clone(),
            ]
        };
        let mut args = vec![
            "proxy".into(),
            "server".into(),
            "--listen".into(),
            tcp(server_port),
            "--target".into(),
            tcp(target),
            "--allow".into(),
            GATEWAY.into(),
        ];
        args.extend(common(&inference));
        let server = spawn(
            enclaveid_bin(),
            &args,
            &[("ENCLAVEID_LOG", "error".into())],
            server_port,
        );
        let mut args = vec![
            "proxy".into(),
            "client".into(),
            "--listen".into(),
            tcp(client_port),
            "--target".into(),
            tcp(server_port),
            "--expect".into(),
            INFERENCE.into(),
        ];
        args.extend(common(&gateway));
        let client = spawn(
            enclaveid_bin(),
            &args,
            &[("ENCLAVEID_LOG", "error".into())],
            client_port,
        );
        paths.push(Path3 {
            name: "enclaveid proxy",
            entry: client_port,
            pids: vec![client.0.id(), server.0.id()],
            _processes: vec![client, server],
        });
    }
    {
        let (server_port, client_port) = (free_port(), free_port());
        let server = spawn(
            &ghostunnel,
            &[
                "server".into(),
                "--listen".into(),
                plain(server_port),
                "--target".into(),
                plain(target),
                "--use-workload-api-addr".into(),
                format!("unix://{}", inference.socket().display()),
                "--allow-uri".into(),
                GATEWAY.into(),
            ],
            &[],
            server_port,
        );
        let client = spawn(
            &ghostunnel,
            &[
                "client".into(),
                "--listen".into(),
                plain(client_port),
                "--target".into(),
                plain(server_port),
                "--use-workload-api-addr".into(),
                format!("unix://{}", gateway.socket().display()),
                "--verify-uri".into(),
                INFERENCE.into(),
            ],
            &[],
            client_port,
        );
        paths.push(Path3 {
            name: "ghostunnel v1.8.4",
            entry: client_port,
            pids: vec![client.0.id(), server.0.id()],
            _processes: vec![client, server],
        });
    }

    let mut rows = Vec::new();
    for path in &paths {
        eprintln!("measuring {}", path.name);
        let mbs = throughput(path.entry, bytes).await;
        let rr = request_response(path.entry, samples).await;
        let cps = connections_per_second(path.entry, handshakes).await;
        let mut held = Vec::with_capacity(open);
        for _ in 0..open {
            held.push(echo_stream(path.entry).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss: u64 = path.pids.iter().map(|pid| rss_kib(*pid)).sum();
        drop(held);
        rows.push((path.name, mbs, rr, cps, rss));
    }
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    println!(
        "TLS proxies, client and server hop, {} MiB upload, {samples} round trips, {handshakes} connections, {open} open",
        bytes >> 20
    );
    println!();
    println!(
        "| path | throughput (MB/s) | 1 KiB RR p50 / p99 | new connections/s | RSS with {open} open (both hops) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, mbs, rr, cps, rss) in &rows {
        println!(
            "| {name} | {mbs:.0} | {} / {} | {cps:.0} | {} KiB |",
            us(rr.0),
            us(rr.1),
            rss
        );
    }
    let (floor, ours, theirs) = (&rows[0], &rows[1], &rows[2]);
    println!();
    println!(
        "enclaveid proxy: throughput {:.2}x the plain relay, {:.2}x ghostunnel; RR p50 {:.2}x ghostunnel; connections/s {:.2}x ghostunnel; RSS {:.2}x ghostunnel",
        ours.1 / floor.1,
        ours.1 / theirs.1,
        ours.2.0.as_secs_f64() / theirs.2.0.as_secs_f64(),
        ours.3 / theirs.3,
        ours.4 as f64 / theirs.4 as f64,
    );
}
