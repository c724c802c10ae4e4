//! Reading a channel's position and recent history (history.lua), and the history a client
//! asks for: recent history, delivered up to its offset first, completed from the archive.

use super::RedisBroker;
use super::connect::unavailable;
use super::envelope::{self, Envelope};
use super::scripts::{HistoryCall, HistoryReply, ScriptError, WhenNew};
use crate::archive::complete_page_waiting;
use crate::broker::{BrokerError, HistoryPage, HistoryQuery};
use crate::util::{new_epoch, unix_millis};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a recovery waits for the archive when its range is in neither recent history nor
/// the archive while archivers are still writing ([`complete_page_waiting`]).
const ARCHIVE_RACE_WAIT: Duration = Duration::from_secs(2);

impl RedisBroker {
    /// Reads a channel's position and history through the history script.
    pub(super) async fn read(
        &self,
        channel: &str,
        since: Option<u64>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let keyspace = &self.config.keyspace;
        let p = keyspace.partition(channel);
        let (meta, history) = (keyspace.meta(p, channel), keyspace.history(p, channel));
        let mut call = HistoryCall {
            meta: &meta,
            history: &history,
            since,
            limit,
            before,
            oldest_ms: unix_millis().saturating_sub(self.config.history_ttl.as_millis() as u64),
            meta_ttl: self.config.meta_ttl,
            when_new: if self.archive.is_some() {
                WhenNew::AskArchive
            } else {
                WhenNew::Start {
                    epoch: new_epoch(),
                    offset: 0,
                }
            },
        };
        let (offset, epoch, entries) = loop {
            let result = self
                .scripts
                .history(&self.client, &call)
                .await
                .map_err(|e| match e {
                    ScriptError::Redis(e) => unavailable(e),
                    ScriptError::Reply(why) => BrokerError::Backend(why.into()),
                });
            self.mark(result.as_ref().map(|_| ()));
            match result? {
                HistoryReply::Page {
                    offset,
                    epoch,
                    entries,
                } => break (offset, epoch, entries),
                HistoryReply::NoState if call.when_new == WhenNew::AskArchive => {
                    // No state in Redis: resume the channel's archived epoch and offset.
                    let (epoch, offset) = self.archived_position(channel).await;
                    call.when_new = WhenNew::Start {
                        epoch: epoch.to_string(),
                        offset,
                    };
                }
                HistoryReply::NoState => {
                    return Err(BrokerError::Backend(
                        "history script: no state twice".into(),
                    ));
                }
            }
        };
        let mut publications = Vec::with_capacity(entries.len());
        for raw in entries {
            match envelope::decode(&raw) {
                Ok(Envelope::Publication(p)) => publications.push(Arc::new(p)),
                _ => {
                    self.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                    return Err(BrokerError::Backend("history holds a bad entry".into()));
                }
            }
        }
        Ok(HistoryPage {
            publications,
            offset,
            epoch,
        })
    }

    /// A client's history query: recent history; on a subscribed channel everything up to
    /// the page's offset delivered first (the barrier); completed from the archive.
    pub(super) async fn history_page(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let query = query.clamped();
        let page = self
            .read(channel, query.since, query.before, query.limit)
            .await?;
        if let Some(track) = self.track(channel) {
            let moved = track.lock().epoch.as_ref() != Some(&page.epoch);
            self.heal(channel, &track, Some(page.offset), moved).await?;
        }
        match &self.archive {
            Some(link) => complete_page_waiting(
                link.archive.as_ref(),
                channel,
                query,
                page,
                || link.stats.pending.load(Ordering::Relaxed) > 0,
                ARCHIVE_RACE_WAIT,
            )
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string())),
            None => Ok(page),
        }
    }
}
