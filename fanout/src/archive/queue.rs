//! The bounded queue between publish and the archive, and the task that empties it.
//!
//! Policy when the queue is full (the database is down or slower than the publish rate): a
//! publish waits up to `wait` for room, then fails with `unavailable`; nothing accepted is
//! ever dropped. A publication leaves the queue only when the transaction holding it
//! committed.

use super::Archive;
use crate::{BrokerError, Publication};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One queued publication and its channel's [`ArchiveMark`].
type Item = (Arc<Publication>, Arc<ArchiveMark>);

/// How far one channel's publications have reached the archive, shared by the channel's
/// state and the queue: the broker keeps in recent history every publication the archive
/// does not hold yet, so that a recovery never falls into the window between the two.
#[derive(Debug, Default)]
pub struct ArchiveMark {
    /// Publications queued and not yet committed.
    pending: AtomicU32,
    /// The highest offset committed (the queue is first in, first out and commits in order,
    /// so every queued offset up to it is committed too).
    through: AtomicU64,
}

impl ArchiveMark {
    /// Messages with an offset above this one may not be in the archive yet and must stay in
    /// recent history; `u64::MAX` when nothing of the channel is waiting.
    pub fn keep_after(&self) -> u64 {
        // `through` is raised before `pending` falls: when nothing is pending, every
        // committed offset is visible, and while something is, `through` may only lag
        // (which keeps more, never less).
        if self.pending.load(Ordering::Acquire) == 0 {
            u64::MAX
        } else {
            self.through.load(Ordering::Acquire)
        }
    }

    /// Publications of the channel queued and not yet committed.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    fn committed(&self, offset: u64) {
        self.through.fetch_max(offset, Ordering::AcqRel);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Settings of the archive queue and its writer.
#[derive(Debug, Clone)]
pub struct ArchiverConfig {
    /// Most publications waiting to be archived.
    pub capacity: usize,
    /// How long a publish waits for room in a full queue before `unavailable`.
    pub wait: Duration,
    /// Most publications per transaction.
    pub batch: usize,
    /// How long the writer waits to fill a batch once it has one publication.
    pub linger: Duration,
    /// First retry delay; doubled per failure up to `max_backoff` (with ±50 % jitter).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Consecutive failures that open the circuit breaker: the writer then probes the database
    /// only every `max_backoff`, and says so in its stats and logs.
    pub breaker_after: u32,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            wait: Duration::from_secs(1),
            batch: 2000,
            linger: Duration::from_millis(100),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            breaker_after: 5,
        }
    }
}

/// Counters and gauges of the archive path, shared by the queue and its writer.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Publications accepted and not yet committed (queued or in the batch being written).
    pub pending: AtomicU64,
    /// Publications committed.
    pub written: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Size of the last committed batch.
    pub last_batch: AtomicU64,
    /// Failed write attempts.
    pub failures: AtomicU64,
    /// Publishes refused because the queue stayed full.
    pub refused: AtomicU64,
    /// Acceptance time (Unix ms) of the oldest publication being written, 0 when idle.
    pub oldest_ms: AtomicU64,
    /// Whether the circuit breaker is open.
    pub breaker_open: AtomicBool,
}

impl ArchiveStats {
    /// Seconds between now and the acceptance of the oldest publication not yet archived.
    pub fn lag_secs(&self) -> f64 {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            oldest => crate::util::unix_millis().saturating_sub(oldest) as f64 / 1000.0,
        }
    }
}

/// The sending side, held by a broker.
pub struct ArchiveQueue {
    tx: mpsc::Sender<Item>,
    wait: Duration,
    stats: Arc<ArchiveStats>,
}

/// Room for one publication in the queue, taken before the publication is accepted.
pub struct ArchivePermit<'a> {
    permit: mpsc::Permit<'a, Item>,
    stats: &'a ArchiveStats,
}

impl ArchivePermit<'_> {
    /// Queues `publication`; `mark` is its channel's.
    pub fn send(self, publication: Arc<Publication>, mark: &Arc<ArchiveMark>) {
        mark.pending.fetch_add(1, Ordering::AcqRel);
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        self.permit.send((publication, mark.clone()));
    }
}

impl ArchiveQueue {
    /// A queue and the writer that empties it into `archive` (spawn [`Archiver::run`]).
    pub fn new(archive: Arc<dyn Archive>, config: ArchiverConfig) -> (Self, Archiver) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(ArchiveStats::default());
        let queue = Self {
            tx,
            wait: config.wait,
            stats: stats.clone(),
        };
        let archiver = Archiver {
            archive,
            rx,
            config,
            stats,
        };
        (queue, archiver)
    }

    /// Waits (up to the configured wait) for room for one publication.
    pub async fn reserve(&self) -> Result<ArchivePermit<'_>, BrokerError> {
        match tokio::time::timeout(self.wait, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(ArchivePermit {
                permit,
                stats: &self.stats,
            }),
            Ok(Err(_)) => Err(BrokerError::Unavailable(
                "the archive writer stopped".into(),
            )),
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(BrokerError::Unavailable(
                    "the archive queue is full (database slow or down); retry later".into(),
                ))
            }
        }
    }

    /// The shared stats.
    pub fn stats(&self) -> &Arc<ArchiveStats> {
        &self.stats
    }

    /// Waits until everything accepted so far is committed, or `deadline`; returns how many
    /// publications are still pending.
    pub async fn flush(&self, deadline: Instant) -> u64 {
        loop {
            let pending = self.stats.pending.load(Ordering::Relaxed);
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The writer: takes batches off the queue and commits them, retrying until they are in.
pub struct Archiver {
    archive: Arc<dyn Archive>,
    rx: mpsc::Receiver<Item>,
    config: ArchiverConfig,
    stats: Arc<ArchiveStats>,
}

impl Archiver {
    /// Runs until the queue's sender is dropped and the queue is empty.
    pub async fn run(mut self) {
        let mut batch: Vec<Item> = Vec::with_capacity(self.config.batch);
        let mut backlog = false;
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            // The writer lingers asleep, not waiting on the queue: publishers then queue
            // without waking it, and it wakes twice per batch instead of once per message (a
            // wake from another worker's thread cost more than the message's insert). After a
            // full batch the queue holds a backlog: no linger, so the write rate stays the
            // database's.
            if !backlog {
                tokio::time::sleep(self.config.linger).await;
            }
            while batch.len() < self.config.batch {
                match self.rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            backlog = batch.len() == self.config.batch;
            self.write(&mut batch).await;
        }
    }

    /// Commits `batch`, retrying with backoff (and the breaker) until it is in; empties it.
    async fn write(&self, batch: &mut Vec<Item>) {
        let publications: Vec<Arc<Publication>> = batch.iter().map(|(p, _)| p.clone()).collect();
        store_with_retry(
            self.archive.as_ref(),
            &publications,
            &self.config,
            &self.stats,
        )
        .await;
        let n = batch.len() as u64;
        for (publication, mark) in batch.drain(..) {
            mark.committed(publication.offset);
        }
        self.stats.pending.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Stores `publications` in one transaction, retrying with exponential backoff and jitter
/// until it succeeds; after `breaker_after` consecutive failures the circuit breaker opens
/// (logged once, shown in `stats`) and the database is probed every `max_backoff`. Counts the
/// batch in `stats` once it is in.
pub(crate) async fn store_with_retry(
    archive: &dyn Archive,
    publications: &[Arc<Publication>],
    config: &ArchiverConfig,
    stats: &ArchiveStats,
) {
    let oldest = publications.iter().map(|p| p.ts).min().unwrap_or(0).max(1);
    stats.oldest_ms.store(oldest, Ordering::Relaxed);
    let mut failures: u32 = 0;
    loop {
        match archive.store(publications).await {
            Ok(()) => break,
            Err(e) => {
                failures += 1;
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let open = failures >= config.breaker_after;
                if open && !stats.breaker_open.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, pending = stats.pending.load(Ordering::Relaxed),
                        "archive circuit breaker open: the database keeps failing; messages wait in the queue");
                } else if !open {
                    tracing::warn!(error = %e, attempt = failures, "archive write failed; retrying");
                }
                let exp = config
                    .min_backoff
                    .saturating_mul(1 << failures.min(16))
                    .min(config.max_backoff);
                let delay = if open {
                    config.max_backoff
                } else {
                    exp.mul_f64(0.5 + rand::random::<f64>())
                };
                tokio::time::sleep(delay).await;
            }
        }
    }
    if stats.breaker_open.swap(false, Ordering::Relaxed) {
        tracing::info!("archive circuit breaker closed: the database is back");
    }
    let n = publications.len() as u64;
    stats.written.fetch_add(n, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.last_batch.store(n, Ordering::Relaxed);
    stats.oldest_ms.store(0, Ordering::Relaxed);
}
