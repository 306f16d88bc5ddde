//! `enclaveid proxy`: mTLS in front of plain TCP services, end to end
//! (`cargo test --workspace -- proxy`). Two agents under one CA play the two enclaves:
//! one serves `spiffe://example.org/inference` (behind `proxy server`), the other
//! `spiffe://example.org/gateway` (behind `proxy client`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_tests::pca::TestPca;
use enclaveid_tests::spire::free_port;
use enclaveid_tests::{AgentProcess, enclaveid_bin, euid};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const INFERENCE: &str = "spiffe://example.org/inference";
const GATEWAY: &str = "spiffe://example.org/gateway";

/// A CA under a root, on disk, for agents that must trust each other; the CA, to sign
/// CRLs with.
pub(super) fn ca(dir: &Path) -> TestPca {
    let root = TestPca::new("proxy test root");
    let (ca, sub) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.join("ca.pem"), &sub.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), &sub.key_pem).unwrap();
    std::fs::write(dir.join("root.pem"), &root.root_pem).unwrap();
    ca
}

/// An agent under `ca` serving `id` to this uid with SVIDs of `ttl`.
fn agent(ca: &Path, id: &str, ttl: &str) -> AgentProcess {
    AgentProcess::start(&format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"{ttl}\"\n\
         [upstream]\nkind = \"dev\"\ncert_path = \"{d}/ca.pem\"\nkey_path = \"{d}/ca.key\"\nbundle_path = \"{d}/root.pem\"\n\
         [attestor]\nkind = \"fake\"\n[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:uid:{}\"]\n",
        euid(),
        d = ca.display()
    ))
}

/// A running `enclaveid proxy`, killed on drop.
pub(super) struct Proxy {
    child: Child,
    log: PathBuf,
    pub(super) port: u16,
}

impl Proxy {
    /// `enclaveid proxy MODE --socket AGENT --listen tcp://127.0.0.1:PORT ARGS`, once it
    /// listens.
    pub(super) fn start(dir: &Path, mode: &str, agent: &AgentProcess, args: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join(format!("proxy-{mode}-{port}.log"));
        let child = Command::new(enclaveid_bin())
            .args(["proxy", mode, "--socket"])
            .arg(agent.socket())
            .args(["--listen", &format!("tcp://127.0.0.1:{port}")])
            .args(args)
            .env(
                "ENCLAVEID_LOG",
                "debug,h2=info,hyper=info,tower=info,rustls=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Self { child, log, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline && proxy.child.try_wait().unwrap().is_none(),
                "proxy {mode} did not listen:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    pub(super) fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line echo server on 127.0.0.1 (each line answered as `echo: LINE`; at the client's
/// end of stream it writes `bye` and closes). With `proxy_v2`, each connection must
/// start with a PROXY v2 header, and the first answer is the SPIFFE ID it carried.
pub(super) async fn echo_server(proxy_v2: bool) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                if proxy_v2 {
                    let mut head = [0u8; 16];
                    read.read_exact(&mut head).await.unwrap();
                    assert_eq!(&head[..12], b"\r\n\r\n\0\r\nQUIT\n");
                    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                    let mut body = vec![0u8; len];
                    read.read_exact(&mut body).await.unwrap();
                    let mut rest = &body[if head[13] == 0x11 { 12 } else { 0 }..];
                    while let [kind, hi, lo, tail @ ..] = rest {
                        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
                        if *kind == 0xE0 {
                            let id = String::from_utf8(tail[..n].to_vec()).unwrap();
                            write
                                .write_all(format!("proxied-for: {id}\n").as_bytes())
                                .await
                                .unwrap();
                        }
                        rest = &tail[n..];
                    }
                }
                let mut line = String::new();
                while read.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if write
                        .write_all(format!("echo: {line}").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    line.clear();
                }
                let _ = write.write_all(b"bye\n").await;
                let _ = write.shutdown().await;
            });
        }
    });
    port
}

/// One request line through `port` and its answer line.
pub(super) async fn ask(stream: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    let mut answer = String::new();
    stream.read_line(&mut answer).await?;
    Ok(answer)
}

pub(super) async fn connect(port: u16) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
}

/// Both agents and the two proxies in front of `target` (the server's) with TTL `ttl`.
struct Pair {
    dir: tempfile::TempDir,
    ca: TestPca,
    _inference: AgentProcess,
    gateway: AgentProcess,
    server: Proxy,
    client: Proxy,
}

fn pair(target: u16, ttl: &str, server_args: &[&str], expect: &str) -> Pair {
    pair_allowing(target, ttl, GATEWAY, server_args, expect)
}

/// [`pair`] whose server allows `allow` only.
fn pair_allowing(target: u16, ttl: &str, allow: &str, server_args: &[&str], expect: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let inference = agent(dir.path(), INFERENCE, ttl);
    let gateway = agent(dir.path(), GATEWAY, ttl);
    let target = format!("tcp://127.0.0.1:{target}");
    let mut args = vec!["--target", &target, "--allow", allow];
    args.extend_from_slice(server_args);
    let server = Proxy::start(dir.path(), "server", &inference, &args);
    let server_address = server.address();
    let client = Proxy::start(
        dir.path(),
        "client",
        &gateway,
        &["--target", &server_address, "--expect", expect],
    );
    Pair {
        dir,
        ca,
        _inference: inference,
        gateway,
        server,
        client,
    }
}

#[test]
fn proxy_curl_through_client_and_server_reaches_a_python_http_server() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("hello.txt"), "hello through mTLS\n").unwrap();
    let port = free_port();
    let mut python = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(site.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "python http.server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pair = pair(port, "1h", &[], INFERENCE);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{}/hello.txt", pair.client.port))
        .output()
        .unwrap();
    let _ = python.kill();
    let _ = python.wait();
    assert!(
        out.status.success() && out.stdout == b"hello through mTLS\n",
        "{}\nclient: {}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        pair.client.log_text(),
        pair.server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuses_impostors_at_the_handshake() {
    let target = echo_server(false).await;
    // The client expects another server ID: it refuses the real one.
    let pair =
        tokio::task::spawn_blocking(move || pair(target, "1h", &[], "spiffe://example.org/other"))
            .await
            .unwrap();
    let mut stream = connect(pair.client.port).await;
    let answer = ask(&mut stream, "hello").await.unwrap_or_default();
    assert_eq!(answer, "", "nothing reaches the service");
    let log = pair.client.log_text();
    assert!(
        log.contains("peer spiffe://example.org/inference is not allowed (allowed: spiffe://example.org/other)"),
        "{log}"
    );

    // A server that allows only another client refuses the gateway in the handshake.
    let pair = tokio::task::spawn_blocking(move || {
        pair_allowing(target, "1h", "spiffe://example.org/other", &[], INFERENCE)
    })
    .await
    .unwrap();
    let mut stream = connect(pair.client.port).await;
    assert_eq!(ask(&mut stream, "hello").await.unwrap_or_default(), "");
    let log = pair.server.log_text();
    assert!(
        log.contains(
            "peer spiffe://example.org/gateway is not allowed (allowed: spiffe://example.org/other)"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_carries_half_close_proxy_v2_and_survives_rotation_under_load() {
    let target = echo_server(true).await;
    let pair =
        tokio::task::spawn_blocking(move || pair(target, "5s", &["--proxy-protocol"], INFERENCE))
            .await
            .unwrap();

    // The PROXY v2 header reached the service with the client's SPIFFE ID.
    let mut stream = connect(pair.client.port).await;
    let mut first = String::new();
    stream.read_line(&mut first).await.unwrap();
    assert_eq!(first, format!("proxied-for: {GATEWAY}\n"));

    // Half-close: our end of stream reaches the service, whose answer still comes back.
    assert_eq!(ask(&mut stream, "one").await.unwrap(), "echo: one\n");
    stream.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "bye\n");

    // Rotation under load: SVIDs of 5 s rotate about every 2.5 s; for 12 s, new
    // connections and one long-lived connection keep working, with no failed request.
    let mut kept = connect(pair.client.port).await;
    let mut line = String::new();
    kept.read_line(&mut line).await.unwrap();
    let started = Instant::now();
    let mut requests = 0u32;
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let port = pair.client.port;
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while started.elapsed() < Duration::from_secs(12) {
                let mut stream = connect(port).await;
                let mut header = String::new();
                stream.read_line(&mut header).await.unwrap();
                let message = format!("w{worker}-{done}");
                let answer = ask(&mut stream, &message).await.unwrap();
                assert_eq!(
                    answer,
                    format!("echo: {message}\n"),
                    "request {done} of worker {worker}"
                );
                done += 1;
            }
            done
        }));
    }
    while started.elapsed() < Duration::from_secs(12) {
        assert_eq!(ask(&mut kept, "kept").await.unwrap(), "echo: kept\n");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in tasks {
        requests += task.await.expect("no failed request");
    }
    assert!(requests > 20, "{requests} requests");
    let log = pair.server.log_text();
    assert!(!log.contains("peer refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_hostile_peers_garbage_and_stalls_are_cut_and_others_served() {
    let target = echo_server(false).await;
    let pair = tokio::task::spawn_blocking(move || {
        pair(
            target,
            "1h",
            &["--handshake-timeout", "1s", "--max-connections", "3"],
            INFERENCE,
        )
    })
    .await
    .unwrap();
    let server = pair.server.port;

    // Garbage instead of a ClientHello: closed.
    let mut garbage = TcpStream::connect(("127.0.0.1", server)).await.unwrap();
    garbage.write_all(&[0x42; 512]).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the garbage connection is closed");

    // A stall mid-handshake: closed after the handshake timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", server)).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x50])
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok() && started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    // Past the connection limit (3), a new connection is closed at once.
    let held: Vec<TcpStream> =
        futures_util::future::join_all((0..3).map(|_| TcpStream::connect(("127.0.0.1", server))))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(("127.0.0.1", server)).await.unwrap();
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut buf)).await;
    assert!(
        cut.is_ok(),
        "the connection over the limit is closed at once"
    );
    assert!(pair.server.log_text().contains("connection limit reached"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Honest traffic still goes through.
    let mut stream = connect(pair.client.port).await;
    assert_eq!(
        ask(&mut stream, "still here").await.unwrap(),
        "echo: still here\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_checks_the_peers_crl_at_each_handshake() {
    let target = echo_server(false).await;
    let crl_dir = tempfile::tempdir().unwrap();
    let crl = crl_dir.path().join("crl.pem");
    let crl_arg = crl.display().to_string();
    let pair =
        tokio::task::spawn_blocking(move || pair(target, "1h", &["--crl", &crl_arg], INFERENCE))
            .await
            .unwrap();
    // No CRL file yet: nothing is revoked.
    let mut stream = connect(pair.client.port).await;
    assert_eq!(ask(&mut stream, "before").await.unwrap(), "echo: before\n");

    // The CA revokes the gateway's SVID: the next handshake is refused.
    let svid = enclaveid_tests::fetch_x509(pair.gateway.socket())
        .await
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&svid.svids[0].x509_svid).unwrap();
    let serial = leaf.serial.to_bytes_be();
    let revoked = pair.ca.crl(&[serial.as_slice()]);
    std::fs::write(&crl, pem::encode(&pem::Pem::new("X509 CRL", revoked))).unwrap();
    let mut stream = connect(pair.client.port).await;
    assert_eq!(ask(&mut stream, "after").await.unwrap_or_default(), "");
    let log = pair.server.log_text();
    assert!(log.contains("revoked"), "{log}");
    let _ = &pair.dir;
}
