//! Runs a scenario with one or more workers, samples the server, shows progress, and writes
//! the report. With several workers, each is a child process (`LOADGEN_WORKER_INDEX` set)
//! that prints progress lines and its final counts on stdout; they are merged here.

use crate::cli::Cli;
use crate::report::{Report, ServerSample};
use crate::server;
use crate::stats::{Stats, WireStats};
use crate::wire::{Dialer, SourceAddr};
use crate::worker::{Phase, Tokens, Worker};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Mutex, watch};

/// Most sockets one worker process opens (the file limit here is about 20,000).
pub const CONNECTIONS_PER_WORKER: usize = 19_000;
const WORKER_INDEX_ENV: &str = "LOADGEN_WORKER_INDEX";
const WORKER_COUNT_ENV: &str = "LOADGEN_WORKER_COUNT";

/// One progress line of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    /// Phase.
    pub phase: Phase,
    /// Open connections.
    pub open: usize,
    /// Connections that got welcome.
    pub connected: u64,
    /// Published.
    pub sent: u64,
    /// Received.
    pub received: u64,
    /// Errors.
    pub errors: u64,
    /// p99 latency so far, ms.
    pub p99_ms: f64,
}

async fn tick_of(worker: &Worker) -> Tick {
    let stats = worker.shared.stats.lock().await;
    Tick {
        phase: worker.shared.phase(),
        open: worker
            .shared
            .open
            .load(std::sync::atomic::Ordering::Relaxed),
        connected: stats.connected,
        sent: stats.sent,
        received: stats.received,
        errors: stats.total_errors(),
        p99_ms: stats.latency.value_at_quantile(0.99) as f64 / 1e6,
    }
}

/// The number of workers for `connections` when `asked` is 0.
pub fn worker_count(asked: usize, connections: usize) -> usize {
    if asked > 0 {
        asked
    } else {
        connections.div_ceil(CONNECTIONS_PER_WORKER).max(1)
    }
}

/// The source address of worker `index` among `n` addresses 127.0.0.1 ..= 127.0.0.n.
pub fn source_addr(index: usize, n: u8) -> Option<IpAddr> {
    (n > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % n as usize) as u8)))
}

fn worker_for(
    cli: &Cli,
    index: usize,
    count: usize,
    start: watch::Receiver<Option<u64>>,
) -> anyhow::Result<Worker> {
    let c = &cli.common;
    let dialer = Dialer {
        urls: c.urls.clone(),
        publisher_urls: c.publisher_urls.clone(),
        protocol: c.protocol,
        encoding: c.encoding,
        // Workers sharing a source address (index ≡ same modulo the address count) pick
        // their ports from disjoint slices.
        source: source_addr(index, c.source_addrs).map(|addr| {
            let sources = usize::from(c.source_addrs);
            Arc::new(SourceAddr::new(
                addr,
                index / sources,
                count.div_ceil(sources),
            ))
        }),
        route: c.route.clone(),
    };
    let tokens = Tokens::new(c.secret.as_deref(), c.tokens.as_deref())?;
    Ok(Worker::new(index, count, dialer, tokens, start))
}

/// Entry point: worker mode when started by a coordinator, coordinator otherwise.
pub async fn main(cli: Cli) -> anyhow::Result<bool> {
    if let Ok(index) = std::env::var(WORKER_INDEX_ENV) {
        let index: usize = index.parse().context("bad worker index")?;
        let count: usize = std::env::var(WORKER_COUNT_ENV)?.parse()?;
        run_child(&cli, index, count).await?;
        return Ok(true);
    }
    coordinate(cli).await
}

/// Child mode: run and print `P <tick>` lines and one `F <stats>` line; the coordinator's
/// `START <unix ms>` line on stdin starts the measured phase.
async fn run_child(cli: &Cli, index: usize, count: usize) -> anyhow::Result<()> {
    let (start_tx, start_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(ms) = line
                .strip_prefix("START ")
                .and_then(|m| m.trim().parse().ok())
            {
                let _ = start_tx.send(Some(ms));
            }
        }
    });
    let worker = worker_for(cli, index, count, start_rx)?;
    let runner = {
        let (worker, scenario) = (worker.clone(), cli.scenario.clone());
        tokio::spawn(async move { worker.run(&scenario).await })
    };
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    while !runner.is_finished() {
        interval.tick().await;
        println!("P {}", serde_json::to_string(&tick_of(&worker).await)?);
    }
    let stats = runner.await?;
    println!("F {}", serde_json::to_string(&WireStats::from(&stats))?);
    Ok(())
}

/// Where the coordinator gets progress and final counts from.
enum Source {
    InProcess(
        Worker,
        tokio::task::JoinHandle<Stats>,
        watch::Sender<Option<u64>>,
    ),
    Children {
        ticks: Arc<Mutex<Vec<Option<Tick>>>>,
        finals: Arc<Mutex<Vec<Option<Stats>>>>,
        children: Vec<tokio::process::Child>,
    },
}

async fn start(cli: &Cli, count: usize) -> anyhow::Result<Source> {
    if count == 1 {
        let (start_tx, start_rx) = watch::channel(None);
        let worker = worker_for(cli, 0, 1, start_rx)?;
        let handle = {
            let (worker, scenario) = (worker.clone(), cli.scenario.clone());
            tokio::spawn(async move { worker.run(&scenario).await })
        };
        return Ok(Source::InProcess(worker, handle, start_tx));
    }
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ticks = Arc::new(Mutex::new(vec![None; count]));
    let finals = Arc::new(Mutex::new(vec![None; count]));
    let mut children = Vec::new();
    for i in 0..count {
        let mut child = tokio::process::Command::new(&exe)
            .args(&args)
            .env(WORKER_INDEX_ENV, i.to_string())
            .env(WORKER_COUNT_ENV, count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (ticks, finals) = (ticks.clone(), finals.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(json) = line.strip_prefix("P ") {
                    if let Ok(t) = serde_json::from_str::<Tick>(json) {
                        ticks.lock().await[i] = Some(t);
                    }
                } else if let Some(json) = line.strip_prefix("F ")
                    && let Ok(w) = serde_json::from_str::<WireStats>(json)
                {
                    finals.lock().await[i] = Stats::try_from(w).ok();
                }
            }
        });
        children.push(child);
    }
    Ok(Source::Children {
        ticks,
        finals,
        children,
    })
}

impl Source {
    /// Summed tick over workers; `None` until every worker reported once.
    async fn tick(&self) -> Option<Tick> {
        match self {
            Source::InProcess(worker, ..) => Some(tick_of(worker).await),
            Source::Children { ticks, .. } => {
                let ticks = ticks.lock().await;
                let all: Option<Vec<&Tick>> = ticks.iter().map(Option::as_ref).collect();
                let all = all?;
                Some(Tick {
                    phase: all.iter().map(|t| t.phase).min()?,
                    open: all.iter().map(|t| t.open).sum(),
                    connected: all.iter().map(|t| t.connected).sum(),
                    sent: all.iter().map(|t| t.sent).sum(),
                    received: all.iter().map(|t| t.received).sum(),
                    errors: all.iter().map(|t| t.errors).sum(),
                    p99_ms: all.iter().map(|t| t.p99_ms).fold(0.0, f64::max),
                })
            }
        }
    }

    /// Tells every worker to start the measured phase at `at_ms` (Unix ms).
    async fn start_all(&mut self, at_ms: u64) {
        match self {
            Source::InProcess(_, _, start) => {
                let _ = start.send(Some(at_ms));
            }
            Source::Children { children, .. } => {
                for child in children {
                    // Write the start and close stdin, which also ends the child's reader.
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(format!("START {at_ms}\n").as_bytes()).await;
                        let _ = stdin.flush().await;
                    }
                }
            }
        }
    }

    fn finished(&mut self) -> bool {
        match self {
            Source::InProcess(_, handle, _) => handle.is_finished(),
            Source::Children { children, .. } => children
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(Some(_)))),
        }
    }

    async fn finish(self) -> anyhow::Result<Stats> {
        match self {
            Source::InProcess(_, handle, _) => Ok(handle.await?),
            Source::Children {
                finals,
                mut children,
                ..
            } => {
                for c in &mut children {
                    let status = c.wait().await?;
                    anyhow::ensure!(status.success(), "a worker process failed: {status}");
                }
                // Let the readers take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut total = Stats::default();
                for (i, f) in finals.lock().await.iter().enumerate() {
                    let f = f
                        .as_ref()
                        .with_context(|| format!("worker {i} sent no final counts"))?;
                    total.merge(f);
                }
                Ok(total)
            }
        }
    }
}

async fn coordinate(cli: Cli) -> anyhow::Result<bool> {
    let common = &cli.common;
    let count = worker_count(common.workers, cli.scenario.connections());
    let pids = common.pids.clone();
    let sample = |pids: &[u32]| ServerSample {
        rss_kib: server::total(pids, |p| server::rss_kib(p).map(|v| v as f64)),
        cpu_secs: server::total(pids, server::cpu_secs),
    };
    let before = sample(&pids);
    let started = Instant::now();
    let mut source = start(&cli, count).await?;
    let bar = (!common.no_progress).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut run_start: Option<(Instant, ServerSample)> = None;
    let mut run_peak_rss: Option<f64> = None;
    let mut run_end: Option<(Instant, ServerSample)> = None;
    let mut started_all = false;
    let mut rate_base = (Instant::now(), 0u64);
    let mut received_per_sec = 0.0;
    while !source.finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(tick) = source.tick().await else {
            continue;
        };
        if tick.phase == Phase::Ready && !started_all {
            // Every worker is connected and subscribed: start together, shortly.
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            source.start_all(now_ms + 200).await;
            started_all = true;
        }
        if tick.phase >= Phase::Run && run_start.is_none() {
            run_start = Some((Instant::now(), sample(&pids)));
        }
        if tick.phase == Phase::Run {
            let rss = sample(&pids).rss_kib;
            run_peak_rss = match (run_peak_rss, rss) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        if tick.phase >= Phase::Done && run_end.is_none() {
            run_end = Some((Instant::now(), sample(&pids)));
        }
        if let Some(bar) = &bar {
            let (then, received_then) = rate_base;
            let secs = then.elapsed().as_secs_f64();
            if secs >= 1.0 {
                received_per_sec = tick.received.saturating_sub(received_then) as f64 / secs;
                rate_base = (Instant::now(), tick.received);
            }
            bar.set_message(format!(
                "{:?} | open {} | connected {} | sent {} | received {} ({:.0}/s) | p99 {:.2} ms | errors {}",
                tick.phase,
                tick.open,
                tick.connected,
                tick.sent,
                tick.received,
                received_per_sec,
                tick.p99_ms,
                tick.errors
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let stats = source.finish().await?;
    let end = (Instant::now(), sample(&pids));
    let run_start = run_start.unwrap_or((started, before.clone()));
    let run_end = run_end.unwrap_or(end);
    let report = Report::build(
        &cli.scenario,
        &stats,
        count,
        &before,
        run_peak_rss,
        started,
        &run_start,
        &run_end,
    );
    report.print();
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.within(common.max_p99_ms, common.max_errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_split_by_the_file_limit() {
        assert_eq!(worker_count(0, 100), 1);
        assert_eq!(worker_count(0, 19_000), 1);
        assert_eq!(worker_count(0, 19_001), 2);
        assert_eq!(worker_count(0, 100_000), 6);
        assert_eq!(worker_count(3, 10), 3);
    }

    #[test]
    fn source_addresses_rotate() {
        assert_eq!(source_addr(0, 1), None);
        assert_eq!(source_addr(0, 4).unwrap().to_string(), "127.0.0.1");
        assert_eq!(source_addr(5, 4).unwrap().to_string(), "127.0.0.2");
    }
}
