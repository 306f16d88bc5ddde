//! `enclaveid api fetch jwt`, `api fetch jwt-bundles`, `api validate jwt` and `api fetch
//! bundle`, through the Workload API's generated client (the exact bytes the agent
//! answers).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use enclaveid_workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use enclaveid_workload_api::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest,
};
use tonic::transport::Channel;

async fn client(endpoint: &str) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    let path = super::unix_path(endpoint)?;
    let channel = enclaveid_workload_api::connect_unix(path)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        enclaveid_workload_api::SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

fn status(what: &str, endpoint: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} from {endpoint}: {:?}: {}",
        status.code(),
        status.message()
    )
}

pub(crate) async fn fetch_jwt(
    endpoint: &str,
    audience: &[String],
    spiffe_id: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let response = super::within(timeout, endpoint, async {
        client(endpoint)
            .await?
            .fetch_jwtsvid(request(JwtsvidRequest {
                audience: audience.to_vec(),
                spiffe_id: spiffe_id.unwrap_or_default().to_owned(),
            }))
            .await
            .map_err(|s| status("fetching JWT-SVIDs", endpoint, s))
    })
    .await??
    .into_inner();
    let mut out = std::io::stdout().lock();
    for svid in response.svids {
        writeln!(out, "token({}):\n\t{}", svid.spiffe_id, svid.svid)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn fetch_jwt_bundles(
    endpoint: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let response = super::within(timeout, endpoint, async {
        let mut stream = client(endpoint)
            .await?
            .fetch_jwt_bundles(request(JwtBundlesRequest {}))
            .await
            .map_err(|s| status("fetching JWT bundles", endpoint, s))?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|s| status("fetching JWT bundles", endpoint, s))?
            .context("the agent closed the stream without a message")
    })
    .await??;
    let mut out = std::io::stdout().lock();
    for (trust_domain, jwks) in response.bundles {
        writeln!(
            out,
            "bundle({trust_domain}):\n\t{}",
            String::from_utf8_lossy(&jwks)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn validate_jwt(
    endpoint: &str,
    audience: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let response = super::within(timeout, endpoint, async {
        client(endpoint)
            .await?
            .validate_jwtsvid(request(ValidateJwtsvidRequest {
                audience: audience.to_owned(),
                svid: token.to_owned(),
            }))
            .await
            .map_err(|s| status("the token is not valid; answer", endpoint, s))
    })
    .await??
    .into_inner();
    let claims = response
        .claims
        .map(|c| serde_json::Value::Object(from_struct(c)))
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "SVID is valid.\nSPIFFE ID : {}\nClaims    : {claims}",
        response.spiffe_id
    )?;
    Ok(ExitCode::SUCCESS)
}

fn from_struct(s: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, from_value(v)))
        .collect()
}

fn from_value(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Value::from(n)
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(from_value).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(from_struct(s)),
    }
}

/// The SPIFFE bundle document of `trust_domain` (what the bundle endpoint serves), from
/// the X.509 and JWT bundles the agent gives this caller: to bootstrap a federated SPIRE
/// server (`spire-server bundle set -format spiffe`).
pub(crate) async fn fetch_bundle(
    endpoint: &str,
    trust_domain: &spiffe::TrustDomain,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let snapshot = super::within(timeout, endpoint, async {
        let mut client = client(endpoint).await?;
        let x509 = client
            .fetch_x509_bundles(request(X509BundlesRequest {}))
            .await
            .map_err(|s| status("fetching X.509 bundles", endpoint, s))?
            .into_inner()
            .message()
            .await
            .map_err(|s| status("fetching X.509 bundles", endpoint, s))?
            .context("the agent closed the stream without a message")?;
        let jwt = client
            .fetch_jwt_bundles(request(JwtBundlesRequest {}))
            .await
            .map_err(|s| status("fetching JWT bundles", endpoint, s))?
            .into_inner()
            .message()
            .await
            .map_err(|s| status("fetching JWT bundles", endpoint, s))?
            .context("the agent closed the stream without a message")?;
        Ok::<_, anyhow::Error>(enclaveid_workload_api::Snapshot {
            bundles: x509.bundles.into_iter().collect(),
            jwt_bundles: jwt.bundles.into_iter().collect(),
            ..Default::default()
        })
    })
    .await??;
    let td = trust_domain.id_string();
    anyhow::ensure!(
        snapshot.bundles.contains_key(&td),
        "the agent at {endpoint} has no bundle for {td}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let document = enclaveid_agent::bundle_document(&snapshot, &td, now, Duration::from_secs(300))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&document)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}
