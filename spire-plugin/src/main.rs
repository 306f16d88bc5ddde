//! `enclaveid-nitro-attestor server|agent`: the `aws_nitro` NodeAttestor plugins for
//! SPIRE. SPIRE starts it (`plugin_cmd`, `plugin_args`); see docs/spire-nitro-attestor.md.

use std::fmt;

use clap::{Parser, ValueEnum};
use enclaveid_spire_plugin::agent::{AgentConfig, AgentPlugin};
use enclaveid_spire_plugin::proto::agent_nodeattestor::node_attestor_server::NodeAttestorServer as AgentServer;
use enclaveid_spire_plugin::proto::config::config_server::ConfigServer;
use enclaveid_spire_plugin::proto::server_nodeattestor::node_attestor_server::NodeAttestorServer as ServerServer;
use enclaveid_spire_plugin::server::{ServerConfig, ServerPlugin};
use enclaveid_spire_plugin::{ConfigService, Configured, goplugin};
use tonic::server::NamedService;
use tonic::service::Routes;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The aws_nitro NodeAttestor plugins for SPIRE.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Which side: `server` for spire-server, `agent` for spire-agent.
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Server,
    Agent,
}

/// The SPIRE plugin type, which is also go-plugin's magic cookie.
const PLUGIN_TYPE: &str = "NodeAttestor";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENCLAVEID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .event_format(HclogLines)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.mode) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // To stderr: go-plugin logs it, and a person who ran the binary reads it.
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(mode: Mode) -> anyhow::Result<()> {
    goplugin::check_host(PLUGIN_TYPE)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config_name = <ConfigServer<ConfigService<ServerConfig>> as NamedService>::NAME.to_owned();
    let (attestor_name, routes) = match mode {
        Mode::Server => {
            let configured = Configured::<ServerConfig>::default();
            (
                <ServerServer<ServerPlugin> as NamedService>::NAME,
                Routes::new(ServerServer::new(ServerPlugin::new(configured.clone())))
                    .add_service(ConfigServer::new(ConfigService::new(configured))),
            )
        }
        Mode::Agent => {
            let configured = Configured::<AgentConfig>::default();
            (
                <AgentServer<AgentPlugin> as NamedService>::NAME,
                Routes::new(AgentServer::new(AgentPlugin::new(configured.clone())))
                    .add_service(ConfigServer::new(ConfigService::new(configured))),
            )
        }
    };
    runtime.block_on(goplugin::serve(
        vec![attestor_name.to_owned(), config_name],
        routes,
    ))?;
    Ok(())
}

/// `[LEVEL] message fields`: go-plugin logs a plugin's stderr line at the level its
/// prefix names (and at DEBUG without one).
struct HclogLines;

impl<S, N> FormatEvent<S, N> for HclogLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "[{}] ", event.metadata().level())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
