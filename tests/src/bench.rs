//! Measuring helpers shared by the benchmarks: open FetchX509SVID streams and wait for a
//! push to reach them all, time to first message, and a process's resident memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enclaveid_workload_api::proto::X509svidRequest;

use crate::{first_message, open_stream, raw_client, with_header};

/// N open FetchX509SVID streams, one connection each, each past its first message.
pub struct OpenStreams {
    changed: Vec<tokio::sync::oneshot::Receiver<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connections are opened in batches so that the listen backlog never overflows.
const BATCH: usize = 50;

pub async fn open_streams(socket: &Path, n: usize) -> OpenStreams {
    let mut changed = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n);
    for batch_start in (0..n).step_by(BATCH) {
        let batch = BATCH.min(n - batch_start);
        for _ in 0..batch {
            let socket: PathBuf = socket.to_owned();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ready = ready_tx.clone();
            changed.push(rx);
            tasks.push(tokio::spawn(async move {
                let mut client = raw_client(&socket).await;
                let (first, mut stream) =
                    open_stream(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
                ready.send(()).await.unwrap();
                while let Ok(Some(next)) = stream.message().await {
                    if next != first {
                        let _ = tx.send(Instant::now());
                        break;
                    }
                }
                // Keep the stream open until the benchmark drops it.
                std::future::pending::<()>().await;
                drop((client, stream));
            }));
        }
        for _ in 0..batch {
            ready_rx.recv().await.unwrap();
        }
    }
    OpenStreams { changed, tasks }
}

impl OpenStreams {
    /// Resolves when every stream has received a changed message (a new SVID, a new
    /// hint): the time from the first to the last receipt.
    pub fn wait_for_change(&mut self) -> impl std::future::Future<Output = Duration> + use<> {
        let receivers = std::mem::take(&mut self.changed);
        async move {
            let mut times = Vec::with_capacity(receivers.len());
            for rx in receivers {
                let received = tokio::time::timeout(Duration::from_secs(60), rx).await;
                times.push(received.expect("rotation within 60 s").unwrap());
            }
            let first = times.iter().min().copied().unwrap();
            let last = times.iter().max().copied().unwrap();
            last - first
        }
    }
}

impl Drop for OpenStreams {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// p50 and p99 of FetchX509SVID time to first message, for the agent and the floor.
/// Samples alternate between the two so that noise from the machine hits both alike.
pub async fn first_message_latency(
    agent: &Path,
    floor: &Path,
    samples: usize,
) -> [(Duration, Duration); 2] {
    let mut clients = [raw_client(agent).await, raw_client(floor).await];
    let mut times = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
    // Warm-up: connection set-up and first allocations are not what is measured.
    for round in 0..(samples + 50) {
        for (client, times) in clients.iter_mut().zip(times.iter_mut()) {
            let started = Instant::now();
            first_message(client.fetch_x509svid(with_header(X509svidRequest {}))).await;
            if round >= 50 {
                times.push(started.elapsed());
            }
        }
    }
    times.map(p50_p99)
}

/// The median and the 99th percentile of `samples` (not empty).
pub fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

/// User + system CPU time of process `pid` so far, from `/proc/PID/stat` (in clock
/// ticks, 10 ms on Linux: coarse).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// The descriptors process `pid` has open, from `/proc/PID/fd`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Anonymous resident memory: the heap and stacks, without the binary's pages.
pub fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
