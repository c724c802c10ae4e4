//! Clustered mode's archive path: the publish script appends every archived publication to
//! one Redis stream (`<prefix>:archive`); every node runs a consumer of the `archivers` group
//! on it, commits what it reads to the database, then acknowledges and deletes the entries.
//!
//! - Several nodes share the work without doing it twice: the group hands each entry to one
//!   consumer.
//! - An entry is acknowledged only after its transaction committed. A node that dies
//!   mid-batch leaves its entries pending; another node claims them (`XAUTOCLAIM`) once they
//!   have been idle for [`CLAIM_IDLE`], and writing them again is harmless (the archive is
//!   idempotent).
//! - The stream is bounded by the publish script (`--archive-queue` entries): past it, publish
//!   answers `unavailable` and nothing accepted is dropped.

use super::envelope::{self, Envelope};
use crate::Publication;
use crate::archive::{Archive, ArchiveStats, ArchiverConfig, store_with_retry};
use bytes::Bytes;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The consumer group of the archive stream.
const GROUP: &str = "archivers";
/// How long an entry stays pending with a consumer before another may claim it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(10);
/// Wait between reads when the stream had nothing new.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One node's consumer of the archive stream.
pub struct StreamArchiver {
    pub(crate) client: Client,
    pub(crate) key: String,
    pub(crate) consumer: String,
    pub(crate) archive: Arc<dyn Archive>,
    pub(crate) config: ArchiverConfig,
    pub(crate) stats: Arc<ArchiveStats>,
}

type Entries = Vec<(String, std::collections::HashMap<String, Bytes>)>;

impl StreamArchiver {
    /// Runs for as long as the process does.
    pub async fn run(self) {
        let mut group_ready = false;
        let mut last_claim = Instant::now();
        let mut last_stats = Instant::now() - Duration::from_secs(60);
        // First what this consumer left pending in an earlier life (same node id).
        let mut backlog = true;
        loop {
            if last_stats.elapsed() >= Duration::from_millis(500) {
                last_stats = Instant::now();
                self.update_stats().await;
            }
            if !group_ready {
                group_ready = self.create_group().await;
                if !group_ready {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            let read = if last_claim.elapsed() >= CLAIM_IDLE / 2 {
                last_claim = Instant::now();
                self.claim().await
            } else {
                self.read(if backlog { "0" } else { ">" }).await
            };
            match read {
                Ok(entries) if entries.is_empty() => {
                    if backlog {
                        backlog = false;
                    } else {
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
                Ok(entries) => self.commit(entries).await,
                Err(e) => {
                    if e.details().contains("NOGROUP") {
                        // Redis lost the stream (a restart without persistence): start over.
                        group_ready = false;
                    } else {
                        tracing::warn!(error = %e, "archive stream read failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    async fn create_group(&self) -> bool {
        let created: Result<Value, _> =
            self.client.xgroup_create(&self.key, GROUP, "0", true).await;
        match created {
            Ok(_) => true,
            Err(e) if e.details().contains("BUSYGROUP") => true,
            Err(e) => {
                tracing::warn!(error = %e, "creating the archive consumer group failed");
                false
            }
        }
    }

    async fn read(&self, id: &str) -> Result<Entries, Error> {
        let response: XReadResponse<String, String, String, Bytes> = self
            .client
            .xreadgroup_map(
                GROUP,
                &self.consumer,
                Some(self.config.batch as u64),
                None,
                false,
                &self.key,
                id,
            )
            .await?;
        Ok(response.into_values().next().unwrap_or_default())
    }

    /// Takes over entries idle with any consumer (a dead node's) for [`CLAIM_IDLE`].
    async fn claim(&self) -> Result<Entries, Error> {
        let (_, entries): (String, Entries) = self
            .client
            .xautoclaim_values(
                &self.key,
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

    /// Commits the publications of `entries`, then acknowledges and deletes them.
    async fn commit(&self, entries: Entries) {
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
        let acked: Result<Value, _> = self.client.xack(&self.key, GROUP, ids.clone()).await;
        if let Err(e) = acked {
            // Still pending: claimed and written again later, harmlessly.
            tracing::warn!(error = %e, "archive stream ack failed");
            return;
        }
        let deleted: Result<Value, _> = self.client.xdel(&self.key, ids).await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "archive stream delete failed");
        }
    }

    /// Pending = entries in the stream; lag = age of the oldest.
    async fn update_stats(&self) {
        if let Ok(len) = self.client.xlen::<u64, _>(&self.key).await {
            self.stats.pending.store(len, Ordering::Relaxed);
            if len == 0 {
                self.stats.oldest_ms.store(0, Ordering::Relaxed);
                return;
            }
        }
        let first: Result<Vec<(String, std::collections::HashMap<String, Bytes>)>, _> = self
            .client
            .xrange_values(&self.key, "-", "+", Some(1))
            .await;
        if let Ok(first) = first {
            let ts = first
                .first()
                .and_then(|(_, fields)| fields.get("e"))
                .and_then(|raw| match envelope::decode(raw) {
                    Ok(Envelope::Publication(p)) => Some(p.ts),
                    _ => None,
                });
            if let Some(ts) = ts {
                self.stats.oldest_ms.store(ts.max(1), Ordering::Relaxed);
            }
        }
    }
}
