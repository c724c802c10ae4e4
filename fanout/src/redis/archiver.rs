//! Clustered mode's archive path: the publish script appends every archived publication to
//! its partition's Redis stream (`<prefix>:{<tag>}:archive`, in the channel's hash slot);
//! every node runs a consumer of the `archivers` group on each, commits what it reads to the
//! database, then acknowledges and deletes the entries. A node reads the partitions it
//! published to at once and sweeps every partition twice a second.
//!
//! - Several nodes share the work without doing it twice: the group hands each entry to one
//!   consumer.
//! - An entry is acknowledged only after its transaction committed. A node that dies
//!   mid-batch leaves its entries pending; another node claims them (`XAUTOCLAIM`) once they
//!   have been idle for [`CLAIM_IDLE`], and writing them again is harmless (the archive is
//!   idempotent).
//! - After a commit, each channel's meta hash records the highest offset the archive holds
//!   (`archived.lua`): the publish script keeps in the channel's history whatever lies above
//!   it, so that a recovery finds every message in history or in the archive, never between.
//! - Each stream is bounded by the publish script (`--archive-queue` entries per partition):
//!   past it, publish answers `unavailable` and nothing accepted is dropped.

use super::Keyspace;
use super::envelope::{self, Envelope};
use super::scripts::ArchivedCall;
use crate::Publication;
use crate::archive::{Archive, ArchiveStats, ArchiverConfig, store_with_retry};
use bytes::Bytes;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The consumer group of the archive stream.
const GROUP: &str = "archivers";
/// How long an entry stays pending with a consumer before another may claim it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(10);
/// Wait between reads when no partition had anything new.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often every partition's stream is read, not only those this node published to (what
/// other nodes published and did not archive themselves).
const SWEEP: Duration = Duration::from_millis(500);

/// Partitions with archived publishes that this node's archiver has not read since: what the
/// node publishes it reads at once, the rest in sweeps.
#[derive(Debug)]
pub(crate) struct HotPartitions(Vec<AtomicBool>);

impl HotPartitions {
    pub(crate) fn new(partitions: usize) -> Self {
        Self((0..partitions).map(|_| AtomicBool::new(false)).collect())
    }

    pub(crate) fn mark(&self, partition: usize) {
        if let Some(flag) = self.0.get(partition) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn take(&self, partition: usize) -> bool {
        self.0[partition].swap(false, Ordering::Relaxed)
    }
}

/// One node's consumer of the archive streams (one per partition).
pub struct StreamArchiver {
    pub(crate) client: Client,
    pub(crate) keyspace: Keyspace,
    pub(crate) keys: Vec<String>,
    pub(super) scripts: Arc<super::scripts::Scripts>,
    pub(crate) hot: Arc<HotPartitions>,
    pub(crate) consumer: String,
    pub(crate) archive: Arc<dyn Archive>,
    pub(crate) config: ArchiverConfig,
    pub(crate) stats: Arc<ArchiveStats>,
}

type Entries = Vec<(String, HashMap<String, Bytes>)>;

impl StreamArchiver {
    /// Runs for as long as the process does.
    pub async fn run(self) {
        let n = self.keys.len();
        let mut group_ready = vec![false; n];
        // First what this consumer left pending in an earlier life (same node id).
        let mut backlog = vec![true; n];
        let mut last_claim = Instant::now();
        let mut last_sweep = Instant::now() - SWEEP;
        // The counters go on while a commit waits out a database outage.
        tokio::spawn(stats_loop(
            self.client.clone(),
            self.keys.clone(),
            self.stats.clone(),
        ));
        loop {
            let claim = last_claim.elapsed() >= CLAIM_IDLE / 2;
            if claim {
                last_claim = Instant::now();
            }
            let sweep = last_sweep.elapsed() >= SWEEP;
            if sweep {
                last_sweep = Instant::now();
            }
            let mut busy = false;
            let mut failed = false;
            for p in 0..n {
                let hot = self.hot.take(p);
                if !(hot || sweep || claim || backlog[p]) {
                    continue;
                }
                if !group_ready[p] {
                    group_ready[p] = self.create_group(&self.keys[p]).await;
                    if !group_ready[p] {
                        continue;
                    }
                }
                let key = &self.keys[p];
                let read = if claim {
                    self.claim(key).await
                } else {
                    self.read(key, if backlog[p] { "0" } else { ">" }).await
                };
                match read {
                    // An empty claim says nothing of this consumer's own backlog.
                    Ok(entries) if entries.is_empty() => backlog[p] &= claim,
                    Ok(entries) => {
                        if entries.len() >= self.config.batch {
                            // More may be waiting: read this partition again next turn.
                            self.hot.mark(p);
                        }
                        self.commit(p, entries).await;
                        busy = true;
                    }
                    Err(e) => {
                        if e.details().contains("NOGROUP") {
                            // Redis lost the stream (a restart without persistence): start over.
                            group_ready[p] = false;
                            self.hot.mark(p);
                        } else {
                            // Redis unreachable: the rest waits for the next turn.
                            tracing::warn!(error = %e, "archive stream read failed");
                            self.hot.mark(p);
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else if !busy {
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }

    async fn create_group(&self, key: &str) -> bool {
        let created: Result<Value, _> = self.client.xgroup_create(key, GROUP, "0", true).await;
        match created {
            Ok(_) => true,
            Err(e) if e.details().contains("BUSYGROUP") => true,
            Err(e) => {
                tracing::warn!(error = %e, "creating the archive consumer group failed");
                false
            }
        }
    }

    async fn read(&self, key: &str, id: &str) -> Result<Entries, Error> {
        // Nothing new is a nil reply, which fred's map form does not take: read the raw
        // reply and convert it only when there is one.
        let reply: Value = self
            .client
            .xreadgroup(
                GROUP,
                &self.consumer,
                Some(self.config.batch as u64),
                None,
                false,
                key,
                id,
            )
            .await?;
        if reply.is_null() {
            return Ok(Entries::new());
        }
        let response: XReadResponse<String, String, String, Bytes> = reply.into_xread_response()?;
        Ok(response.into_values().next().unwrap_or_default())
    }

    /// Takes over entries idle with any consumer (a dead node's) for [`CLAIM_IDLE`].
    async fn claim(&self, key: &str) -> Result<Entries, Error> {
        let (_, entries): (String, Entries) = self
            .client
            .xautoclaim_values(
                key,
                GROUP,
                &self.consumer,
                CLAIM_IDLE.as_millis() as u64,
                "0-0",
                Some(self.config.batch as u64),
                false,
            )
            .await?;
        Ok(entries)
    }

    /// Commits the publications of `entries` (of partition `p`), records how far each
    /// channel is archived, then acknowledges and deletes them.
    async fn commit(&self, p: usize, entries: Entries) {
        let key = &self.keys[p];
        let mut ids = Vec::with_capacity(entries.len());
        let mut publications: Vec<Arc<Publication>> = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            match fields.get("e").map(envelope::decode) {
                Some(Ok(Envelope::Publication(p))) => publications.push(Arc::new(p)),
                _ => tracing::warn!(%id, "unreadable archive stream entry dropped"),
            }
            ids.push(id);
        }
        store_with_retry(
            self.archive.as_ref(),
            &publications,
            &self.config,
            &self.stats,
        )
        .await;
        self.mark_archived(p, &publications).await;
        let acked: Result<Value, _> = self.client.xack(key, GROUP, ids.clone()).await;
        if let Err(e) = acked {
            // Still pending: claimed and written again later, harmlessly.
            tracing::warn!(error = %e, "archive stream ack failed");
            return;
        }
        let deleted: Result<Value, _> = self.client.xdel(key, ids).await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "archive stream delete failed");
        }
    }
}

impl StreamArchiver {
    /// Raises each channel's archived mark to the highest offset of `publications` (all of
    /// partition `p`, so one script call in one hash slot). A failure only keeps more in
    /// history until the next commit raises the mark.
    async fn mark_archived(&self, p: usize, publications: &[Arc<Publication>]) {
        let mut top: HashMap<(&str, &str), u64> = HashMap::new();
        for publication in publications {
            let at = top
                .entry((&publication.channel, &publication.epoch))
                .or_default();
            *at = (*at).max(publication.offset);
        }
        if top.is_empty() {
            return;
        }
        let mut call = ArchivedCall::default();
        for ((channel, epoch), offset) in top {
            call.push(self.keyspace.meta(p, channel), epoch, offset);
        }
        if let Err(e) = self.scripts.archived(&self.client, &call).await {
            tracing::warn!(error = %e, "recording the archived offsets failed");
        }
    }
}

/// Every 500 ms: pending = entries in the streams; lag = age of the oldest.
async fn stats_loop(client: Client, keys: Vec<String>, stats: Arc<ArchiveStats>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        update_stats(&client, &keys, &stats).await;
    }
}

async fn update_stats(client: &Client, keys: &[String], stats: &ArchiveStats) {
    // Every stream's length in one round trip; the oldest entry only of those not empty.
    let pipeline = client.pipeline();
    for key in keys {
        let _: Result<(), _> = pipeline.xlen(key).await;
    }
    let Ok(lengths) = pipeline.all::<Vec<u64>>().await else {
        return;
    };
    let pending = lengths.iter().sum();
    let mut oldest = 0u64;
    for (key, _) in keys.iter().zip(&lengths).filter(|(_, len)| **len > 0) {
        let first: Result<Entries, _> = client.xrange_values(key, "-", "+", Some(1)).await;
        let ts = first.ok().and_then(|first| {
            first
                .first()
                .and_then(|(_, fields)| fields.get("e"))
                .and_then(|raw| match envelope::decode(raw) {
                    Ok(Envelope::Publication(p)) => Some(p.ts.max(1)),
                    _ => None,
                })
        });
        if let Some(ts) = ts {
            oldest = if oldest == 0 { ts } else { oldest.min(ts) };
        }
    }
    stats.pending.store(pending, Ordering::Relaxed);
    stats.oldest_ms.store(oldest, Ordering::Relaxed);
}
