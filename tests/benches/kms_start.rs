//! Start-up benchmark: time from `enclaveid run` starting to the first X.509-SVID served,
//! in `kms` mode (fake KMS on loopback, moto S3, `enclaveid host` on a Unix socket) against
//! `dev` mode (CA generated in memory), in the same run.
//!
//! The `kms` breakdown comes from the agent's own log line for its first sync
//! (`attestation_us`: RSA-2048 recipient key + attestation document; `host_us`: material,
//! credentials and CRL from the host; `kms_us`: the Decrypt round trip through the tunnel;
//! `cms_us`: CMS parse and decryption; `verify_us`: chain, CRL and key checks); minting
//! comes from the agent's log line for the SVID it issued (`mint_us`, in `dev` mode).
//!
//! Run: `cargo bench -p enclaveid-tests --bench kms_start` (7 starts of each), or with
//! `-- --quick` (3 starts) as CI does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark binary: failures abort the run, results go to stdout"
)]

use std::time::{Duration, Instant};

use enclaveid_tests::kms_world::{ADMITTED_PCR0, World};
use enclaveid_tests::pca::Profile;
use enclaveid_tests::{AgentProcess, euid, raw_client, with_header};
use enclaveid_workload_api::proto::X509svidRequest;

const FIELDS: [&str; 5] = ["attestation_us", "host_us", "kms_us", "cms_us", "verify_us"];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let starts = if quick { 3 } else { 7 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(starts));
}

async fn run(starts: usize) {
    let mut world = World::new().await;
    let ca = world.pca.issue_for(
        Profile::Ca {
            trust_domain_uri: "spiffe://example.org",
        },
        Duration::from_secs(86_400),
    );
    world.publish(world.material(&ca), world.pca.crl(&[])).await;
    world.start_host();
    let kms_config = world.agent_config(ADMITTED_PCR0, &[("spiffe://example.org/bench", "1h")], "");
    let dev_config = format!(
        "trust_domain = \"example.org\"\nsocket_path = \"{{socket}}\"\n\
         [upstream]\nkind = \"dev\"\n[attestor]\nkind = \"fake\"\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    );

    // Warm-up: binaries built, caches filled.
    drop(time_to_first_svid(&dev_config).await);
    drop(time_to_first_svid(&kms_config).await);

    let mut dev = Vec::new();
    let mut kms = Vec::new();
    let mut mints = Vec::new();
    let mut steps: Vec<Vec<u64>> = vec![Vec::new(); FIELDS.len()];
    for _ in 0..starts {
        let (elapsed, log) = time_to_first_svid(&dev_config).await;
        dev.push(elapsed);
        let line = log
            .lines()
            .find(|l| l.contains("issued X.509-SVID"))
            .expect("the mint's log line");
        mints.push(field_value(line, "mint_us"));
        let (elapsed, log) = time_to_first_svid(&kms_config).await;
        kms.push(elapsed);
        let line = log
            .lines()
            .find(|l| l.contains("key material released by KMS and checked"))
            .expect("the sync's log line");
        for (i, field) in FIELDS.iter().enumerate() {
            steps[i].push(field_value(line, field));
        }
    }
    mints.sort_unstable();
    let mint = Duration::from_micros(mints[mints.len() / 2]);

    let dev_ms = median_ms(&mut dev);
    let kms_ms = median_ms(&mut kms);
    println!("start to first X.509-SVID served, median of {starts} starts");
    println!("  dev mode (floor): {dev_ms:8.1} ms");
    println!(
        "  kms mode:         {kms_ms:8.1} ms   ({:.2}x dev)",
        kms_ms / dev_ms
    );
    println!("kms mode breakdown (median, from the agent's log)");
    for (i, field) in FIELDS.iter().enumerate() {
        steps[i].sort_unstable();
        let us = steps[i][steps[i].len() / 2];
        println!(
            "  {:<12} {:8.2} ms",
            field.trim_end_matches("_us"),
            us as f64 / 1000.0
        );
    }
    println!(
        "  {:<12} {:8.2} ms   (one SVID, from the dev agent's log)",
        "mint",
        mint.as_secs_f64() * 1000.0
    );
}

/// Starts an agent and polls until it serves an SVID: (elapsed, the agent's log).
async fn time_to_first_svid(config: &str) -> (Duration, String) {
    let started = Instant::now();
    let agent = AgentProcess::start_quiet(config);
    loop {
        let mut client = raw_client(agent.socket()).await;
        if let Ok(response) = client.fetch_x509svid(with_header(X509svidRequest {})).await
            && let Ok(Some(message)) = response.into_inner().message().await
            && !message.svids.is_empty()
        {
            return (started.elapsed(), agent.stderr_text());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no SVID: {}",
            agent.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn field_value(line: &str, field: &str) -> u64 {
    let start = line
        .find(&format!("{field}="))
        .expect("field in the log line")
        + field.len()
        + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}
