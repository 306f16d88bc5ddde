//! The relay as an operator runs it: `enclaveid host` processes carrying streams through
//! one and two parents, and refusing destinations not on the allow-list.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enclaveid_io::{Address, AddressExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A running `enclaveid host`, killed on drop.
struct Parent {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Parent {
    fn start(dir: &Path, name: &str, args: &[String], ready: &Address) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(enclaveid_tests::enclaveid_bin())
            .arg("host")
            .args(args)
            .env("ENCLAVEID_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "AKIAENCLAVEIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "enclaveid-test-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn enclaveid host");
        let mut parent = Self { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        let reachable = |address: &Address| match address {
            Address::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            Address::Tcp(addr) => std::net::TcpStream::connect(addr).is_ok(),
            Address::Vsock { .. } => false,
        };
        while !reachable(ready) {
            if parent.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                panic!(
                    "enclaveid host {name} did not start:\n{}",
                    parent.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        parent
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An enclave's service: reads to the end of the stream, answers it reversed.
async fn reverser(address: &Address) {
    let listener = address.bind().await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await.unwrap();
                got.reverse();
                stream.write_all(&got).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}

async fn exchange(address: &Address, bytes: &[u8]) -> Vec<u8> {
    let mut stream = address.connect().await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    answer
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_processes_carry_a_stream_through_one_and_two_parents() {
    let dir = tempfile::tempdir().unwrap();
    let unix = |name: &str| Address::Unix(dir.path().join(name));
    // The inference enclave's service, behind parent B (inbound: TCP to the enclave).
    let enclave = unix("inference-enclave.sock");
    reverser(&enclave).await;
    let b_listen = Address::Tcp(format!("127.0.0.1:{}", free_tcp_port()));
    let _b = Parent::start(
        dir.path(),
        "parent-b",
        &[
            "--relay-only".into(),
            format!("--route={b_listen}={enclave}"),
        ],
        &b_listen,
    );
    // The gateway enclave dials parent A (outbound: to parent B over TCP).
    let a_listen = unix("parent-a.sock");
    let a = Parent::start(
        dir.path(),
        "parent-a",
        &[
            "--relay-only".into(),
            format!("--route={a_listen}={b_listen}"),
        ],
        &a_listen,
    );
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut reversed = big.clone();
    reversed.reverse();
    assert_eq!(exchange(&b_listen, b"one parent").await, b"tnerap eno");
    assert_eq!(
        exchange(&a_listen, &big).await,
        reversed,
        "two parents, 1 MB"
    );
    let log = a.stderr_text();
    assert!(log.contains("relay route"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_destinations_not_on_the_allow_list_and_logs_them() {
    use enclaveid_checks::wire::{self, Op};
    let dir = tempfile::tempdir().unwrap();
    let enclave = Address::Unix(dir.path().join("other-enclave.sock"));
    reverser(&enclave).await;
    let listen = Address::Unix(dir.path().join("host.sock"));
    let parent = Parent::start(
        dir.path(),
        "parent",
        &[
            format!("--listen={listen}"),
            "--kms-endpoint=127.0.0.1:9".into(),
            "--region=us-east-1".into(),
            format!("--relay-allow={enclave}"),
        ],
        &listen,
    );
    let connect = |target: String| {
        let listen = listen.clone();
        async move {
            let mut stream = listen.connect().await.unwrap();
            stream
                .write_all(&wire::encode_request(Op::Connect, target.as_bytes()))
                .await
                .unwrap();
            let mut head = [0; wire::ANSWER_HEAD];
            stream.read_exact(&mut head).await.unwrap();
            (head, stream)
        }
    };
    let (head, mut stream) = connect("tcp://169.254.169.254:80".into()).await;
    assert_eq!(head[0], 1, "refused");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.contains("not on the relay allow-list"), "{text}");
    let (head, mut stream) = connect(enclave.to_string()).await;
    assert_eq!(head, [0; wire::ANSWER_HEAD], "allowed");
    stream.write_all(b"abc").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"cba");
    let log = parent.stderr_text();
    assert!(
        log.contains("relay refused") && log.contains("169.254.169.254:80"),
        "the refusal is logged with the destination:\n{log}"
    );
}

#[test]
fn relay_a_bad_route_is_refused_with_what_is_accepted() {
    let out = Command::new(enclaveid_tests::enclaveid_bin())
        .args(["host", "--relay-only", "--route", "vsock://any:6000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("LISTEN=DESTINATION"), "{text}");
    let out = Command::new(enclaveid_tests::enclaveid_bin())
        .args([
            "host",
            "--relay-only",
            "--route",
            "vsock://any:6000=http://x:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("http://x:1") && text.contains("tcp://HOST:PORT"),
        "{text}"
    );
}
