//! `enclaveid healthcheck`: gRPC health (`grpc.health.v1.Health/Check`) on the Workload
//! API socket, as `spire-agent healthcheck` does. The agent reports SERVING while every
//! registration entry has a current SVID; the `enclaveid-status` header says why it is
//! degraded (still serving; exit 0) or not serving (exit 1).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub(crate) async fn check(endpoint: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let path = super::unix_path(endpoint)?;
    let status = super::within(timeout, endpoint, async {
        let channel = enclaveid_workload_api::connect_unix(path).await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        let reason = response
            .metadata()
            .get(enclaveid_agent::STATUS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok::<_, anyhow::Error>((response.into_inner().status(), reason))
    })
    .await?
    .with_context(|| format!("agent at {endpoint} is unhealthy"))?;
    match status {
        (ServingStatus::Serving, None) => {
            eprintln!("Agent is healthy.");
            Ok(ExitCode::SUCCESS)
        }
        (ServingStatus::Serving, Some(reason)) => {
            eprintln!("Agent is serving, {reason}");
            Ok(ExitCode::SUCCESS)
        }
        (status, reason) => {
            eprintln!(
                "Agent is unhealthy: {status:?}{}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
