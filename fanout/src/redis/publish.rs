//! Publishing: one run of publish.lua per publication (dedup, offset, history, archive
//! stream and SPUBLISH in one atomic step), resuming a channel Redis has no state for at its
//! archived position.

use super::RedisBroker;
use super::connect::unavailable;
use super::scripts::{ChannelKeys, PublishCall, PublishReply, ScriptError, WhenNew};
use crate::broker::{BrokerError, PublishOutcome, PublishRequest};
use crate::util::{new_epoch, unix_millis};
use fred::interfaces::ClientLike;
use std::sync::Arc;

impl RedisBroker {
    /// Publishes `request`: once, or twice when Redis had no state for the channel (the
    /// second run starts it at its archived position).
    pub(super) async fn publish_resuming(
        &self,
        request: &PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        let first = if self.archive.is_some() {
            WhenNew::AskArchive
        } else {
            WhenNew::Start {
                epoch: new_epoch(),
                offset: 0,
            }
        };
        match self.publish_once(request, first).await? {
            Some(outcome) => Ok(outcome),
            None => {
                let (epoch, offset) = self.archived_position(&request.channel).await;
                let start = WhenNew::Start {
                    epoch: epoch.to_string(),
                    offset,
                };
                self.publish_once(request, start)
                    .await?
                    .ok_or_else(|| BrokerError::Backend("publish script: no state twice".into()))
            }
        }
    }

    /// One run of the publish script; `None` when Redis has no state for the channel and
    /// `when_new` asked for the archived position.
    async fn publish_once(
        &self,
        request: &PublishRequest,
        when_new: WhenNew,
    ) -> Result<Option<PublishOutcome>, BrokerError> {
        let channel = &request.channel;
        let archived = request.archive && self.archive.is_some();
        let keyspace = &self.config.keyspace;
        let p = keyspace.partition(channel);
        let call = PublishCall {
            keys: ChannelKeys::new(keyspace, p, channel),
            archive_stream: keyspace.archive_stream(p),
            shard_channel: keyspace.pubsub_channel_in(p, channel),
            channel,
            from: &request.from,
            payload: &request.data,
            now_ms: unix_millis(),
            idem: request.idem.as_deref(),
            when_new,
            history_size: self.config.history_size,
            history_ttl: self.config.history_ttl,
            meta_ttl: self.config.meta_ttl,
            dedup_window: self.config.dedup_window,
            dedup_max_keys: self.config.dedup_max_keys,
            archived,
            archive_bound: self.archive.as_ref().map_or(0, |a| a.bound),
        };
        // Without a connection nothing is sent: the publish is refused for sure. (fred would
        // also queue the command for a reconnection within the timeout, after which nobody
        // could say whether it ran.)
        if !self.client.is_connected() {
            let e = BrokerError::Unavailable("not connected to Redis; nothing was sent".into());
            self.mark(Err(&e));
            return Err(e);
        }
        let result = self.scripts.publish(&self.client, &call).await;
        // Sent and unanswered (a frozen or slow Redis, a connection broken mid-request): the
        // script may still run. The client is told so, and retries with its `idem`.
        let result = result.map_err(|e| match e {
            ScriptError::Redis(e) => match unavailable(e) {
                BrokerError::Unavailable(why) => BrokerError::OutcomeUnknown(why),
                other => other,
            },
            ScriptError::Reply(why) => BrokerError::Backend(why.into()),
        });
        self.mark(result.as_ref().map(|_| ()));
        let reply = result?;
        if archived {
            self.hot.mark(p);
        }
        match reply {
            PublishReply::Published { offset, epoch } => Ok(Some(PublishOutcome {
                offset,
                epoch,
                duplicate: false,
            })),
            PublishReply::Duplicate { offset, epoch } => Ok(Some(PublishOutcome {
                offset,
                epoch,
                duplicate: true,
            })),
            PublishReply::NoState => Ok(None),
            PublishReply::ArchiveFull => Err(BrokerError::Unavailable(
                "the archive stream is full (database slow or down); retry later".into(),
            )),
            PublishReply::DedupFull => Err(BrokerError::DedupFull),
        }
    }

    /// A channel's archived position, to resume it when Redis has no state for it.
    pub(super) async fn archived_position(&self, channel: &str) -> (Arc<str>, u64) {
        let archive = self.archive.as_ref().map(|a| a.archive.clone());
        // With the database down too, the channel starts a new epoch rather than refuse
        // publishes: subscribers see the epoch change and reload (availability first).
        let position = match archive {
            Some(archive) => archive.position(channel).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, %channel, "archived position unreadable; new epoch");
                None
            }),
            None => None,
        };
        match position {
            Some(p) => (p.epoch, p.offset),
            None => (new_epoch().into(), 0),
        }
    }
}
