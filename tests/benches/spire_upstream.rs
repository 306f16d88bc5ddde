//! EnclaveID with `upstream.kind = "spire"` against spire-agent v1.13.3 in the same role,
//! in one run on the same machine: one spire-server (with the project's aws_nitro plugin),
//! the EnclaveID agent attested as an aws_nitro node (fake attestor), spire-agent attested
//! with a join token; each serves one entry to this uid, created on the server. Both sync
//! every 5 s (spire-agent's fixed interval; EnclaveID's default).
//!
//! Measured for each:
//! - RSS idle, and with 100 and with 1,000 open FetchX509SVID streams;
//! - FetchX509SVID time to first message, p50/p99, on a reused connection (samples
//!   alternate between the agents);
//! - time from `spire-server entry create` returning to an open stream receiving the new
//!   SVID (median of 5);
//! - CPU time (user + system) over an idle window: 10 minutes, `--idle SECS` to change.
//!
//! A third agent is the floor for RSS and CPU: EnclaveID with the `dev` upstream (its CA in
//! memory, one entry), the same Workload API without a server to talk to.
//!
//! EnclaveID's per-uid connection cap is raised to let one uid hold 1,000 connections.
//!
//! Run: `cargo bench -p enclaveid-tests --bench spire_upstream`; `-- --quick` for a smoke
//! run (100 streams, 30 s idle). Needs Go to build SPIRE on first use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use enclaveid_tests::bench::{cpu_time, first_message_latency, open_streams, rss_kib};
use enclaveid_tests::spire::SpireServer;
use enclaveid_tests::{
    AgentProcess, euid, open_stream, raw_client, wait_for_x509svid, with_header,
};
use enclaveid_workload_api::proto::X509svidRequest;

const TD: &str = "nitro.example";
const MODULE_ID: &str = "i-0bench0000000000-enc0bench000000000";

/// Time from `entry create` returning to an open stream on `socket` receiving the new
/// entry's SVID.
async fn entry_to_stream(server: &SpireServer, socket: &Path, parent: &str, n: usize) -> Duration {
    let mut client = raw_client(socket).await;
    let (first, mut stream) =
        open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
    let id = format!("spiffe://{TD}/new-{n}-{}", parent.len());
    server.cli_ok(&[
        "entry",
        "create",
        "-parentID",
        parent,
        "-spiffeID",
        &id,
        "-selector",
        &format!("unix:uid:{}", euid()),
    ]);
    let created = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(next) = stream.message().await.unwrap() {
            if next.svids.len() > first.svids.len() {
                return;
            }
        }
    })
    .await
    .expect("the new entry within 60 s");
    created.elapsed()
}

fn print_rss(when: &str, [ours, theirs, dev]: [u64; 3]) {
    println!(
        "rss {when}: enclaveid {ours} KiB, spire-agent {theirs} KiB ({:.2}x); floor: enclaveid with the dev upstream {dev} KiB",
        ours as f64 / theirs as f64
    );
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let idle = std::env::args()
        .skip_while(|a| a != "--idle")
        .nth(1)
        .map(|s| Duration::from_secs(s.parse().expect("--idle SECS")))
        .unwrap_or(if quick {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(600)
        });
    let dir = tempfile::tempdir().unwrap();
    let (server, enclaveid, spire_agent) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            let server = SpireServer::start_nitro(&dir, TD, "");
            // One uid opens all the streams, one connection each: above the default
            // per-uid cap of 256 connections, which spire-agent does not have.
            let limits = "[limits]\nmax_connections = 4096\nmax_connections_per_uid = 4096\n";
            let config =
                server.enclaveid_config(&dir, MODULE_ID, &enclaveid_tests::spire::NITRO_PCR0, "5s");
            let enclaveid = AgentProcess::start_quiet(&format!("{config}{limits}"));
            let spire_agent = server.start_agent(&dir);
            (server, enclaveid, spire_agent)
        }
    })
    .await
    .unwrap();
    let enclave_parent = format!("spiffe://{TD}/spire/agent/aws_nitro/{MODULE_ID}");
    let node_parent = format!("spiffe://{TD}/node");
    let uid = format!("unix:uid:{}", euid());
    for parent in [&enclave_parent, &node_parent] {
        // The enclave agent may still be attesting: retry until the parent exists.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server
            .cli(&["agent", "show", "-spiffeID", parent])
            .status
            .success()
            && parent == &enclave_parent
        {
            assert!(
                Instant::now() < deadline,
                "the enclave agent did not attest"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server.cli_ok(&[
            "entry",
            "create",
            "-parentID",
            parent,
            "-spiffeID",
            &format!("spiffe://{TD}/bench"),
            "-selector",
            &uid,
        ]);
    }
    wait_for_x509svid(&enclaveid, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while enclaveid_tests::fetch_x509(spire_agent.socket())
        .await
        .map_or(true, |r| r.svids.is_empty())
    {
        assert!(Instant::now() < deadline, "spire-agent served no SVID");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The floor: the same Workload API with the `dev` upstream (a CA in memory), one entry.
    let dev = AgentProcess::start_quiet(&format!(
        "trust_domain = \"{TD}\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [limits]\nmax_connections = 4096\nmax_connections_per_uid = 4096\n\
         [[entry]]\nspiffe_id = \"spiffe://{TD}/bench\"\nselectors = [\"{uid}\"]\n"
    ));
    let pids = [
        ("enclaveid", enclaveid.pid()),
        ("spire-agent", spire_agent.pid()),
        ("enclaveid dev", dev.pid()),
    ];
    println!("spire_upstream: one server, one entry each, sync every 5 s, 2 vCPUs");

    tokio::time::sleep(Duration::from_secs(5)).await;
    print_rss("idle", pids.map(|(_, pid)| rss_kib(pid)));

    let samples = if quick { 200 } else { 1000 };
    let [ours, theirs] =
        first_message_latency(enclaveid.socket(), spire_agent.socket(), samples).await;
    println!(
        "first message p50: enclaveid {}, spire-agent {} ({:.2}x); p99: {} / {} ({:.2}x)",
        ms(ours.0),
        ms(theirs.0),
        ours.0.as_secs_f64() / theirs.0.as_secs_f64(),
        ms(ours.1),
        ms(theirs.1),
        ours.1.as_secs_f64() / theirs.1.as_secs_f64()
    );

    let mut waits = [Vec::new(), Vec::new()];
    for n in 0..5 {
        for (i, (socket, parent)) in [
            (enclaveid.socket(), &enclave_parent),
            (spire_agent.socket(), &node_parent),
        ]
        .into_iter()
        .enumerate()
        {
            waits[i].push(entry_to_stream(&server, socket, parent, n).await);
        }
    }
    let [ours, theirs] = waits.map(|w| enclaveid_tests::bench::p50_p99(w).0);
    println!(
        "entry create to stream (median of 5): enclaveid {}, spire-agent {} ({:.2}x)",
        ms(ours),
        ms(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );

    let counts: &[usize] = if quick { &[100] } else { &[100, 1000] };
    for &n in counts {
        let a = open_streams(enclaveid.socket(), n).await;
        let b = open_streams(spire_agent.socket(), n).await;
        let c = open_streams(dev.socket(), n).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        print_rss(
            &format!("with {n} streams"),
            pids.map(|(_, pid)| rss_kib(pid)),
        );
        drop((a, b, c));
        // Let both agents see those connections close before the next round.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let before = pids.map(|(_, pid)| cpu_time(pid));
    tokio::time::sleep(idle).await;
    let after = pids.map(|(_, pid)| cpu_time(pid));
    let [_, _, dev_cpu] = [0, 1, 2].map(|i| after[i] - before[i]);
    println!(
        "floor: enclaveid with the dev upstream, cpu {}",
        ms(dev_cpu)
    );
    let used = [after[0] - before[0], after[1] - before[1]];
    println!(
        "cpu over {}s idle: enclaveid {}, spire-agent {} ({:.2}x)",
        idle.as_secs(),
        ms(used[0]),
        ms(used[1]),
        used[0].as_secs_f64() / used[1].as_secs_f64().max(1e-9)
    );
}
