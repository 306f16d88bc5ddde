//! `enclaveid attest verify` and `enclaveid attest fake`: attestation documents by hand.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;
#[cfg(feature = "fake")]
use enclaveid_attestor::{AttestationRequest, Attestor as _, FakeAttestor, FakeConfig};
use enclaveid_attestor::{Policy, VerifiedDocument, Verifier, VerifyAt, hex};

/// Accepted values per PCR, as `--pcrN HEX` options (repeatable: any one of them).
#[derive(Args, Default)]
pub(crate) struct PcrArgs {
    /// Accepted PCR0 (enclave image) value, hex; repeat to accept several.
    #[arg(long, value_name = "HEX")]
    pcr0: Vec<String>,
    /// Accepted PCR1 (kernel and boot ramfs) value, hex.
    #[arg(long, value_name = "HEX")]
    pcr1: Vec<String>,
    /// Accepted PCR2 (application) value, hex.
    #[arg(long, value_name = "HEX")]
    pcr2: Vec<String>,
    /// Accepted PCR3 (IAM role of the parent instance) value, hex.
    #[arg(long, value_name = "HEX")]
    pcr3: Vec<String>,
    /// Accepted PCR4 (parent instance ID) value, hex.
    #[arg(long, value_name = "HEX")]
    pcr4: Vec<String>,
    /// Accepted PCR5 value, hex.
    #[arg(long, value_name = "HEX")]
    pcr5: Vec<String>,
    /// Accepted PCR6 value, hex.
    #[arg(long, value_name = "HEX")]
    pcr6: Vec<String>,
    /// Accepted PCR7 value, hex.
    #[arg(long, value_name = "HEX")]
    pcr7: Vec<String>,
    /// Accepted PCR8 (signing certificate of the image) value, hex.
    #[arg(long, value_name = "HEX")]
    pcr8: Vec<String>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The attestation document (COSE_Sign1 bytes, as NSM returns them).
    file: PathBuf,
    /// Check certificates at this time (RFC 3339, e.g. 2025-01-06T17:00:00Z) instead of now.
    #[arg(long, value_name = "RFC3339", conflicts_with = "at_doc_time", value_parser = humantime::parse_rfc3339_weak)]
    at: Option<SystemTime>,
    /// Check certificates at the document's own timestamp (for archived documents only).
    #[arg(long)]
    at_doc_time: bool,
    #[command(flatten)]
    pcrs: PcrArgs,
    /// Accept a debug-mode enclave (PCR0 all zeros); its memory is readable by the parent.
    #[arg(long)]
    allow_debug: bool,
    /// Pin this root (PEM) instead of the AWS Nitro Enclaves root G1.
    #[arg(long, value_name = "PEM")]
    root: Option<PathBuf>,
}

#[cfg(feature = "fake")]
#[derive(Args)]
pub(crate) struct FakeArgs {
    /// PCR values of the fake enclave (hex, 48 bytes); only the first of each is used.
    #[command(flatten)]
    pcrs: PcrArgs,
    /// A debug-mode enclave: every PCR zero.
    #[arg(long)]
    debug: bool,
    /// Bind this nonce (hex).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Bind this user data (hex).
    #[arg(long, value_name = "HEX")]
    user_data: Option<String>,
    /// Bind this public key (a DER file).
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Where to write the document.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Where to write the fake root (PEM), to verify the document with `--root`.
    #[arg(long, value_name = "FILE")]
    root_out: Option<PathBuf>,
    /// Where to write the fake root's key (PKCS#8 PEM, mode 0600): with `--root-out`, a
    /// root for an agent's `attestor.root_cert_path` and `root_key_path`, which relying
    /// parties pin (`--attestation-root`) in development.
    #[arg(long, value_name = "FILE", requires = "root_out")]
    root_key_out: Option<PathBuf>,
}

impl PcrArgs {
    fn parse(&self) -> anyhow::Result<BTreeMap<u8, Vec<Vec<u8>>>> {
        let all = [
            &self.pcr0, &self.pcr1, &self.pcr2, &self.pcr3, &self.pcr4, &self.pcr5, &self.pcr6,
            &self.pcr7, &self.pcr8,
        ];
        let mut pcrs = BTreeMap::new();
        for (index, values) in (0u8..).zip(all) {
            if values.is_empty() {
                continue;
            }
            let parsed = values
                .iter()
                .map(|v| parse_hex(v).with_context(|| format!("--pcr{index} {v:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            pcrs.insert(index, parsed);
        }
        Ok(pcrs)
    }
}

pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let document =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let verifier = match &args.root {
        Some(path) => root_verifier(path)?,
        None => Verifier::aws(),
    };
    let policy = Policy {
        pcrs: args.pcrs.parse()?,
        allow_debug: args.allow_debug,
        ..Policy::default()
    };
    let at = match (args.at, args.at_doc_time) {
        (_, true) => VerifyAt::DocumentTime,
        (Some(at), false) => VerifyAt::Time(at),
        (None, false) => VerifyAt::Time(SystemTime::now()),
    };
    match verifier.verify(&document, &policy, at) {
        Ok(verified) => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &to_json(&verified))?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "enclaveid: attestation document {} refused: {error}",
                args.file.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(feature = "fake")]
pub(crate) fn fake(args: FakeArgs) -> anyhow::Result<ExitCode> {
    let pcrs = args
        .pcrs
        .parse()?
        .into_iter()
        .filter_map(|(i, values)| values.into_iter().next().map(|v| (i, v)))
        .collect::<BTreeMap<_, _>>();
    if let Some((index, value)) = pcrs.iter().find(|(_, v)| v.len() != 48) {
        anyhow::bail!(
            "--pcr{index} is {} bytes; Nitro PCRs are 48 bytes (SHA-384)",
            value.len()
        );
    }
    let attestor = FakeAttestor::new(FakeConfig {
        pcrs,
        debug: args.debug,
        ..FakeConfig::default()
    })?;
    let request = AttestationRequest {
        public_key: args
            .public_key
            .as_deref()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .transpose()?,
        user_data: args
            .user_data
            .as_deref()
            .map(parse_hex)
            .transpose()
            .context("--user-data")?,
        nonce: args
            .nonce
            .as_deref()
            .map(parse_hex)
            .transpose()
            .context("--nonce")?,
    };
    let document = attestor.attest(&request)?;
    write(&args.out, &document)?;
    if let Some(root_out) = &args.root_out {
        write(root_out, attestor.root_pem().as_bytes())?;
    }
    if let Some(key_out) = &args.root_key_out {
        enclaveid_io::write_atomically(key_out, attestor.root().key_pem.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", key_out.display()))?;
    }
    eprintln!(
        "wrote a fake attestation document to {}{}",
        args.out.display(),
        args.root_out
            .as_ref()
            .map(|r| format!(" and its root to {}", r.display()))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "fake")]
fn write(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

fn parse_hex(value: &str) -> anyhow::Result<Vec<u8>> {
    let value = value.trim();
    enclaveid_attestor::parse_hex(value)
        .with_context(|| format!("{value:?} is not hex (accepted: an even number of 0-9, a-f)"))
}

fn to_json(document: &VerifiedDocument) -> serde_json::Value {
    let opt = |v: &Option<Vec<u8>>| v.as_deref().map(hex);
    serde_json::json!({
        "verified": true,
        "module_id": document.module_id,
        "timestamp": humantime::format_rfc3339_millis(document.timestamp).to_string(),
        "debug_mode": document.debug_mode,
        "pcrs": document.pcrs.iter().map(|(i, v)| (i.to_string(), hex(v))).collect::<BTreeMap<_, _>>(),
        "public_key": opt(&document.public_key),
        "user_data": opt(&document.user_data),
        "nonce": opt(&document.nonce),
    })
}

/// A verifier pinned to the root certificate in the PEM file at `path`.
fn root_verifier(path: &std::path::Path) -> anyhow::Result<Verifier> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der =
        pem::parse(pem).with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    Ok(Verifier::with_root_der(der.contents()))
}
