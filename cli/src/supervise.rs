//! `enclaveid run --config FILE -- COMMAND ARGS…`: the agent and one workload in one
//! enclave, with no other init system. The workload starts once every entry has its first
//! SVID, with `SPIFFE_ENDPOINT_SOCKET` set; SIGTERM and SIGINT are passed on to it; every
//! child that ends is reaped (the agent is a child subreaper, and PID 1 in an enclave);
//! when the workload exits, the agent shuts down cleanly and `enclaveid` exits with the
//! workload's status (128 + N when a signal N ended it, as shells report it).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use enclaveid_agent::Agent;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit status when the workload cannot be started (as shells use for "not found").
const EXIT_NOT_STARTED: u8 = 127;

/// Runs `agent` and, once it is ready, `command`; returns the workload's exit status.
pub(crate) async fn supervise(
    agent: Agent,
    command: &[OsString],
    ready_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    // Orphans of the workload are re-parented to us, not to an init we may not have.
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(%error, "cannot become a child subreaper; orphans of the workload are reaped by init");
    }
    // Watch before anything can exit, so no SIGCHLD is missed.
    let mut children = signal(SignalKind::child()).context("watching SIGCHLD")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;

    let socket = agent.socket_path().to_owned();
    let ready = agent.ready();
    let stop = CancellationToken::new();
    let mut served = tokio::spawn(agent.serve(stop.clone().cancelled_owned()));

    // Wait for the first SVIDs; a signal or the agent ending first stops everything.
    let started = tokio::select! {
        () = ready => true,
        () = tokio::time::sleep(ready_timeout) => {
            tracing::error!(
                timeout = %humantime::format_duration(ready_timeout),
                "no SVID for every entry in time; the workload is not started"
            );
            false
        }
        _ = term.recv() => false,
        _ = int.recv() => false,
        ended = &mut served => return agent_ended(ended),
    };
    if !started {
        stop.cancel();
        agent_ended(served.await)?;
        return Ok(ExitCode::FAILURE);
    }

    let child = match spawn(command, &socket) {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "the workload could not be started");
            stop.cancel();
            agent_ended(served.await)?;
            return Ok(ExitCode::from(EXIT_NOT_STARTED));
        }
    };
    tracing::info!(pid = child.as_raw(), command = ?command, "workload started");

    let status = loop {
        tokio::select! {
            _ = children.recv() => {
                if let Some(status) = reap(child) {
                    break status;
                }
            }
            _ = term.recv() => forward(child, Signal::SIGTERM),
            _ = int.recv() => forward(child, Signal::SIGINT),
            ended = &mut served => {
                // The agent stopped under the workload: it would run without identities.
                let error = agent_ended(ended).err();
                tracing::error!(error = ?error, "the agent stopped; terminating the workload");
                forward(child, Signal::SIGTERM);
                let status = wait_for(child, &mut children).await;
                tracing::info!(status, "workload exited");
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    tracing::info!(status, "workload exited; stopping the agent");
    stop.cancel();
    agent_ended(served.await)?;
    Ok(ExitCode::from(status))
}

/// Starts the workload with the Workload API's address in its environment.
fn spawn(command: &[OsString], socket: &Path) -> anyhow::Result<Pid> {
    let (program, args) = command.split_first().context("no command after --")?;
    let child = std::process::Command::new(program)
        .args(args)
        .env(crate::ENV_ENDPOINT, format!("unix://{}", socket.display()))
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    // Reaped below by waitpid, never through `Child` (dropping it does not wait or kill).
    let pid = Pid::from_raw(i32::try_from(child.id()).context("a pid out of range")?);
    drop(child);
    Ok(pid)
}

/// Reaps every child that has ended; the workload's exit status if it was one of them.
fn reap(workload: Pid) -> Option<u8> {
    let mut status = None;
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                status = Some(u8::try_from(code).unwrap_or(u8::MAX));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == workload => {
                status = Some(128u8.saturating_add(signal as u8));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return status,
            Ok(other) => tracing::debug!(?other, "reaped a child"),
        }
    }
}

async fn wait_for(workload: Pid, children: &mut tokio::signal::unix::Signal) -> u8 {
    loop {
        if let Some(status) = reap(workload) {
            return status;
        }
        children.recv().await;
    }
}

fn forward(workload: Pid, signal: Signal) {
    tracing::info!(%signal, pid = workload.as_raw(), "passing the signal on to the workload");
    if let Err(error) = nix::sys::signal::kill(workload, signal) {
        tracing::warn!(%error, "could not signal the workload");
    }
}

/// The agent's end: an error if it failed.
fn agent_ended(
    ended: Result<Result<(), enclaveid_agent::Error>, tokio::task::JoinError>,
) -> anyhow::Result<ExitCode> {
    ended.context("the agent task panicked")??;
    Ok(ExitCode::SUCCESS)
}
