//! `enclaveid api fetch x509` and `enclaveid api watch`, through the `spiffe` crate's
//! Workload API client, as any workload would.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use spiffe::X509Svid;
use spiffe::workload_api::{WorkloadApiClient, X509Context};

pub(crate) async fn fetch_x509(
    endpoint: &str,
    write: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let context = super::within(timeout, endpoint, async {
        let client = WorkloadApiClient::connect_to(endpoint).await?;
        client.fetch_x509_context().await
    })
    .await?
    .with_context(|| format!("fetching X.509-SVIDs from {endpoint}"))?;
    let elapsed = started.elapsed();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Received {} svid after {:.3}ms\n",
        context.svids().len(),
        elapsed.as_secs_f64() * 1000.0
    )?;
    print_context(&mut out, &context)?;
    if let Some(dir) = write {
        write_files(dir, &context)?;
        writeln!(out, "Writing SVIDs and bundles to {}", dir.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn watch(endpoint: &str) -> anyhow::Result<ExitCode> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            let client = WorkloadApiClient::connect_to(endpoint).await?;
            let mut updates = client.stream_x509_contexts().await?;
            while let Some(update) = updates.next().await {
                let context = update?;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "Received {} svid at {}",
                    context.svids().len(),
                    humantime::format_rfc3339_seconds(SystemTime::now())
                );
                let _ = print_context(&mut out, &context);
                let _ = out.flush();
            }
            Ok::<_, spiffe::workload_api::WorkloadApiError>(())
        };
        match attempt.await {
            Ok(()) => eprintln!("enclaveid: the stream from {endpoint} ended; reconnecting"),
            Err(error) => eprintln!(
                "enclaveid: {error}; retrying in {}",
                humantime::format_duration(backoff)
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn print_context(out: &mut impl std::io::Write, context: &X509Context) -> anyhow::Result<()> {
    for svid in context.svids() {
        print_svid(out, svid, context)?;
    }
    Ok(())
}

fn print_svid(
    out: &mut impl std::io::Write,
    svid: &X509Svid,
    context: &X509Context,
) -> anyhow::Result<()> {
    writeln!(out, "SPIFFE ID:\t\t{}", svid.spiffe_id())?;
    if let Some(hint) = svid.hint() {
        writeln!(out, "Hint:\t\t\t{hint}")?;
    }
    let (after, until) = validity(svid.leaf().as_bytes())?;
    writeln!(out, "SVID Valid After:\t{after}")?;
    writeln!(out, "SVID Valid Until:\t{until}")?;
    for (i, cert) in svid.cert_chain().iter().skip(1).enumerate() {
        let (after, until) = validity(cert.as_bytes())?;
        writeln!(out, "Intermediate #{} Valid After:\t{after}", i + 1)?;
        writeln!(out, "Intermediate #{} Valid Until:\t{until}", i + 1)?;
    }
    if let Some(bundle) = context.bundle_set().get(svid.spiffe_id().trust_domain()) {
        for (i, cert) in bundle.authorities().iter().enumerate() {
            let (after, until) = validity(cert.as_bytes())?;
            writeln!(out, "CA #{} Valid After:\t{after}", i + 1)?;
            writeln!(out, "CA #{} Valid Until:\t{until}", i + 1)?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn validity(der: &[u8]) -> anyhow::Result<(String, String)> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).context("parsing a received certificate")?;
    let fmt = |t: x509_parser::time::ASN1Time| {
        humantime::format_rfc3339_seconds(SystemTime::from(t.to_datetime())).to_string()
    };
    Ok((
        fmt(cert.validity().not_before),
        fmt(cert.validity().not_after),
    ))
}

/// Writes each SVID as `svid.N.pem` (chain), `svid.N.key` (PKCS#8, mode 0600) and
/// `bundle.N.pem` (its trust domain's bundle). Each file is written to a temporary file
/// in `dir` and renamed, so a reader never sees half a key or a key of another SVID.
fn write_files(dir: &Path, context: &X509Context) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, svid) in context.svids().iter().enumerate() {
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_bytes()));
        write_atomic(
            dir,
            &format!("svid.{i}.pem"),
            chain.collect::<String>().as_bytes(),
            0o644,
        )?;
        let key =
            enclaveid_checks::secret_pem::encode("PRIVATE KEY", svid.private_key().as_bytes());
        write_atomic(dir, &format!("svid.{i}.key"), key.as_bytes(), 0o600)?;
        let bundle = context
            .bundle_set()
            .get(svid.spiffe_id().trust_domain())
            .with_context(|| format!("no bundle for the trust domain of {}", svid.spiffe_id()))?;
        let roots = bundle
            .authorities()
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_bytes()));
        write_atomic(
            dir,
            &format!("bundle.{i}.pem"),
            roots.collect::<String>().as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

fn pem_block(tag: &str, der: &[u8]) -> String {
    enclaveid_checks::secret_pem::encode(tag, der).to_string()
}

fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    enclaveid_io::write_atomically(&path, data, mode)
        .with_context(|| format!("writing {}", path.display()))
}
