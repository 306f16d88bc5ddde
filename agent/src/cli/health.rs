//! `enclaveid healthcheck`: gRPC health (`grpc.health.v1.Health/Check`) on the Workload
//! API socket, as `spire-agent healthcheck` does. The agent reports SERVING while every
//! registration entry has a current SVID.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub(crate) async fn check(endpoint: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .with_context(|| format!("healthcheck needs a unix socket, not {endpoint}"))?
        .to_owned();
    let status = super::within(timeout, endpoint, async {
        let channel = enclaveid_workload_api::connect_unix(path).await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok::<_, anyhow::Error>(response.into_inner().status())
    })
    .await?
    .with_context(|| format!("agent at {endpoint} is unhealthy"))?;
    if status == ServingStatus::Serving {
        eprintln!("Agent is healthy.");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("Agent is unhealthy: {status:?}");
        Ok(ExitCode::FAILURE)
    }
}
