//! Attested SVIDs (issue 22): what the attestation costs, against the same thing without
//! it, in one run on one machine.
//!
//! - Handshakes: a full mTLS 1.3 handshake in memory (rustls, EnclaveID's peer verifier
//!   `enclaveid_agent::peer_tls`, both SVIDs from agents' Workload API), the server
//!   presenting an attested SVID and the client requiring its PCR0 (`--require-pcr0`),
//!   against the server presenting a plain SVID and the client requiring nothing (the
//!   floor). Then the resumed handshake of each: resumption carries no certificate, so
//!   the document is not verified again (each resumed sample is checked to be one).
//! - Mint: the agent's own `mint_us` of an attested entry (document from the fake
//!   attestor, extension, second signature, self-check) against a plain entry of the
//!   same agent, over forced rotations (SIGUSR1).
//! - Size: the leaf's DER, attested and plain.
//!
//! Run: `cargo bench -p enclaveid-tests --bench attested_svid` (`-- --quick`: fewer
//! samples).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclaveid_agent::peer_tls::{self, Allowed, Attestation, PeerPolicy};
use enclaveid_attestor::{FakeAttestor, FakeConfig, Verifier, hex};
use enclaveid_tests::bench::p50_p99;
use enclaveid_tests::pca::TestPca;
use enclaveid_tests::{AgentProcess, euid};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use spiffe::{SpiffeId, X509Source};

const PCR0: [u8; 48] = [0x4d; 48];

fn agent(dir: &Path, entries: &[(&str, bool)]) -> AgentProcess {
    let mut config = format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\nsvid_ttl = \"1h\"\n\
         [upstream]\nkind = \"dev\"\ncert_path = \"{d}/ca.pem\"\nkey_path = \"{d}/ca.key\"\nbundle_path = \"{d}/root.pem\"\n\
         [attestor]\nkind = \"fake\"\nroot_cert_path = \"{d}/attestation-root.pem\"\nroot_key_path = \"{d}/attestation-root.key\"\n\
         pcrs = {{ 0 = \"{pcr0}\" }}\n",
        d = dir.display(),
        pcr0 = hex(&PCR0)
    );
    for (name, attested) in entries {
        config.push_str(&format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/{name}\"\nselectors = [\"unix:uid:{}\"]\nattested = {attested}\n",
            euid()
        ));
    }
    AgentProcess::start_quiet(&config)
}

async fn source(agent: &AgentProcess) -> X509Source {
    X509Source::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .unwrap()
}

fn policy(id: &str, attestation: Option<Attestation>) -> PeerPolicy {
    PeerPolicy {
        allowed: Allowed::Ids(vec![SpiffeId::new(id).unwrap()]),
        crls: Vec::new(),
        attestation,
        resumption: true,
    }
}

/// One handshake between fresh connections of `client` and `server`, in memory, until
/// neither has anything to send (the server's tickets included); its time and kind.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (Duration, HandshakeKind) {
    let start = Instant::now();
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("inference").unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    loop {
        let mut moved = false;
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            moved = true;
            let mut rd = &wire[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            moved = true;
            let mut rd = &wire[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
        }
        if !moved {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (start.elapsed(), c.handshake_kind().unwrap())
}

fn leaf_len(source: &X509Source) -> usize {
    source.svid().unwrap().leaf().as_bytes().len()
}

/// `mint_us` of every "issued X.509-SVID" line of `id` in the agent's log.
fn mint_times(log: &str, id: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains("issued X.509-SVID") && l.contains(id))
        .filter_map(|l| {
            let at = l.find("mint_us")?;
            let digits: String = l[at + 7..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok().map(Duration::from_micros)
        })
        .collect()
}

fn line(what: &str, (p50, p99): (Duration, Duration), floor: (Duration, Duration)) {
    println!(
        "{what:<44} p50 {:>9.1?} p99 {:>9.1?}   {:.2}x the floor's p50",
        p50,
        p99,
        p50.as_secs_f64() / floor.0.as_secs_f64()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let samples = if quick { 50 } else { 1000 };
    let mints = if quick { 5 } else { 40 };
    let dir = tempfile::tempdir().unwrap();
    let root = TestPca::new("bench root");
    let (_, ca) = root.subordinate("spiffe://example.org", Duration::from_secs(86_400));
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("ca.key"), &ca.key_pem).unwrap();
    std::fs::write(dir.path().join("root.pem"), &root.root_pem).unwrap();
    let fake = FakeAttestor::new(FakeConfig::default()).unwrap().root();
    std::fs::write(dir.path().join("attestation-root.pem"), &fake.cert_pem).unwrap();
    std::fs::write(dir.path().join("attestation-root.key"), &fake.key_pem).unwrap();
    let verifier = Verifier::with_root_der(&pem::parse(&fake.cert_pem).unwrap().into_contents());

    let attested_agent = agent(dir.path(), &[("inference", true)]);
    let plain_agent = agent(dir.path(), &[("inference", false)]);
    let gateway_agent = agent(dir.path(), &[("gateway", false)]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (attested, plain, gateway) = runtime.block_on(async {
        (
            source(&attested_agent).await,
            source(&plain_agent).await,
            source(&gateway_agent).await,
        )
    });
    let _guard = runtime.enter();

    const INFERENCE: &str = "spiffe://example.org/inference";
    const GATEWAY: &str = "spiffe://example.org/gateway";
    let server =
        |source: &X509Source| peer_tls::server_config(source, policy(GATEWAY, None)).unwrap();
    let client = |attestation: Option<Attestation>, resume: bool| {
        let mut config =
            (*peer_tls::client_config(&gateway, policy(INFERENCE, attestation)).unwrap()).clone();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    };
    let requirement = || {
        Some(Attestation::with_verifier(
            vec![PCR0.to_vec()],
            verifier.clone(),
        ))
    };
    let plain_server = server(&plain);
    let attested_server = server(&attested);
    let full_plain = client(None, false);
    let full_attested = client(requirement(), false);
    let resumed_plain = client(None, true);
    let resumed_attested = client(requirement(), true);
    // The first handshake of each resuming client is a full one that stores the tickets.
    for (c, s) in [
        (&resumed_plain, &plain_server),
        (&resumed_attested, &attested_server),
    ] {
        assert_eq!(handshake(c, s).1, HandshakeKind::Full);
    }

    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..samples {
        let (t, kind) = handshake(&full_plain, &plain_server);
        assert_eq!(kind, HandshakeKind::Full);
        times[0].push(t);
        let (t, kind) = handshake(&full_attested, &attested_server);
        assert_eq!(kind, HandshakeKind::Full);
        times[1].push(t);
        let (t, kind) = handshake(&resumed_plain, &plain_server);
        assert_eq!(kind, HandshakeKind::Resumed);
        times[2].push(t);
        let (t, kind) = handshake(&resumed_attested, &attested_server);
        assert_eq!(kind, HandshakeKind::Resumed);
        times[3].push(t);
    }
    let [
        full_plain_t,
        full_attested_t,
        resumed_plain_t,
        resumed_attested_t,
    ] = times.map(p50_p99);

    // The verification alone, on the attested leaf.
    let leaf = attested.svid().unwrap().leaf().as_bytes().to_vec();
    let id = SpiffeId::new(INFERENCE).unwrap();
    let check = requirement().unwrap();
    let verify: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            check
                .check(&leaf, &id, std::time::SystemTime::now())
                .unwrap();
            start.elapsed()
        })
        .collect();

    // Mints: forced rotations of an agent with one entry of each kind.
    let both = agent(dir.path(), &[("plain", false), ("attested", true)]);
    for _ in 0..mints {
        both.renew();
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = both.stderr_text();
    let plain_mints = mint_times(&log, "spiffe://example.org/plain");
    let attested_mints = mint_times(&log, "spiffe://example.org/attested");
    assert!(
        plain_mints.len() > mints / 2 && attested_mints.len() > mints / 2,
        "{log}"
    );

    println!("attested SVIDs, {samples} samples per handshake kind, alternating");
    line(
        "full handshake, plain SVID (floor)",
        full_plain_t,
        full_plain_t,
    );
    line(
        "full handshake, attested, --require-pcr0",
        full_attested_t,
        full_plain_t,
    );
    line(
        "resumed handshake, plain (floor)",
        resumed_plain_t,
        resumed_plain_t,
    );
    line(
        "resumed handshake, attested, --require-pcr0",
        resumed_attested_t,
        resumed_plain_t,
    );
    line("verify_attested_svid alone", p50_p99(verify), full_plain_t);
    let plain_mint = p50_p99(plain_mints);
    line("mint, plain entry (floor)", plain_mint, plain_mint);
    line(
        "mint, attested entry (fake attestor)",
        p50_p99(attested_mints),
        plain_mint,
    );
    println!(
        "leaf size: plain {} bytes, attested {} bytes",
        leaf_len(&plain),
        leaf_len(&attested)
    );
}
