//! The embedded broker: offsets, history and dedup in process memory.

use crate::broker::{
    Broker, BrokerError, ControlEvent, Dispatcher, HistoryPage, HistoryQuery, PublishOutcome,
    PublishRequest,
};
use crate::dedup::DedupTable;
use crate::history::History;
use crate::{FrameCache, Publication};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SHARDS: usize = 64;

/// Bounds of the embedded broker.
#[derive(Debug, Clone)]
pub struct LocalBrokerConfig {
    /// Most messages kept per channel.
    pub history_size: usize,
    /// Longest time a message stays in history.
    pub history_ttl: Duration,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Most idempotency keys remembered per channel.
    pub dedup_max_keys: usize,
}

impl Default for LocalBrokerConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            dedup_window: Duration::from_secs(120),
            dedup_max_keys: 100_000,
        }
    }
}

/// State of one channel. Its mutex orders publishes: offset, history and dispatch happen
/// under it, so subscribers see offsets in order and history never lags the live stream.
struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    history: History,
    dedup: DedupTable,
}

impl ChannelState {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            history: History::default(),
            dedup: DedupTable::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.history.is_empty() && self.dedup.is_empty()
    }
}

fn new_epoch() -> Arc<str> {
    let n: u64 = rand::random();
    format!("{n:016x}").into()
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Mutex<ChannelState>>>>;

/// In-process [`Broker`] for one node.
pub struct LocalBroker {
    shards: Box<[Shard]>,
    hasher: RandomState,
    config: LocalBrokerConfig,
    dispatcher: Arc<dyn Dispatcher>,
}

impl LocalBroker {
    /// A broker that hands every accepted message to `dispatcher`.
    pub fn new(config: LocalBrokerConfig, dispatcher: Arc<dyn Dispatcher>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
            config,
            dispatcher,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    fn channel(&self, channel: &str) -> Arc<Mutex<ChannelState>> {
        let shard = self.shard(channel);
        if let Some(state) = shard.read().get(channel) {
            return state.clone();
        }
        shard
            .write()
            .entry(Arc::from(channel))
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new())))
            .clone()
    }

    /// Expires history and dedup keys and forgets idle channels: no history, no dedup key
    /// and no subscriber on this node (a subscribed channel keeps its offset and epoch, so
    /// its subscribers never see offsets restart). Call it periodically.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            shard.write().retain(|channel, state| {
                let mut state = state.lock();
                state.history.expire(now, self.config.history_ttl);
                state.dedup.expire(now, self.config.dedup_window);
                let keep = !state.is_empty() || self.dispatcher.has_subscribers(channel);
                forgotten += usize::from(!keep);
                keep
            });
        }
        forgotten
    }

    /// Number of channels with state.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[async_trait::async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let state = self.channel(&request.channel);
        let mut state = state.lock();
        let now = Instant::now();
        state.dedup.expire(now, self.config.dedup_window);
        if let Some(key) = &request.idem {
            if let Some(offset) = state.dedup.get(key) {
                return Ok(PublishOutcome {
                    offset,
                    epoch: state.epoch.clone(),
                    duplicate: true,
                });
            }
            state
                .dedup
                .ensure_room(self.config.dedup_max_keys)
                .map_err(|_| {
                    BrokerError::Unavailable("too many idempotency keys on this channel".into())
                })?;
        }
        state.offset += 1;
        let publication = Arc::new(Publication {
            channel: request.channel,
            offset: state.offset,
            epoch: state.epoch.clone(),
            from: request.from,
            data: request.data,
            ts: unix_millis(),
            accepted_at: now,
            frames: FrameCache::default(),
        });
        state.history.expire(now, self.config.history_ttl);
        state
            .history
            .push(publication.clone(), self.config.history_size);
        if let Some(key) = request.idem {
            state.dedup.insert(key, publication.offset, now);
        }
        // Dispatch under the channel lock: that is what keeps delivery in offset order and
        // lets a recovering subscriber join history and the live stream without a gap.
        self.dispatcher.dispatch(&publication);
        Ok(PublishOutcome {
            offset: publication.offset,
            epoch: publication.epoch.clone(),
            duplicate: false,
        })
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let state = self.channel(channel);
        let mut state = state.lock();
        state
            .history
            .expire(Instant::now(), self.config.history_ttl);
        Ok(HistoryPage {
            publications: state.history.read(query.since, query.limit),
            offset: state.offset,
            epoch: state.epoch.clone(),
        })
    }

    /// In process, delivery needs no setup: the dispatcher already knows its subscribers,
    /// and channel state is created by the first publish or history read.
    async fn subscribe_node(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe_node(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish_control(&self, event: ControlEvent) -> Result<(), BrokerError> {
        self.dispatcher.dispatch_control(&event);
        Ok(())
    }

    fn history_capacity(&self) -> usize {
        self.config.history_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecoveryOutcome;

    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, u64)>>,
        subscribed: Mutex<Vec<String>>,
    }

    impl Dispatcher for Recorder {
        fn dispatch(&self, p: &Arc<Publication>) {
            self.seen.lock().push((p.channel.to_string(), p.offset));
        }
        fn dispatch_control(&self, _: &ControlEvent) {}
        fn has_subscribers(&self, channel: &str) -> bool {
            self.subscribed.lock().iter().any(|c| c == channel)
        }
    }

    fn request(channel: &str, idem: Option<&str>) -> PublishRequest {
        PublishRequest {
            channel: channel.into(),
            from: "alice".into(),
            data: serde_json::json!({"t": 1}),
            idem: idem.map(str::to_owned),
        }
    }

    fn broker(config: LocalBrokerConfig) -> (LocalBroker, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        (LocalBroker::new(config, recorder.clone()), recorder)
    }

    #[tokio::test]
    async fn offsets_are_contiguous_per_channel_and_dispatched_in_order() {
        let (b, rec) = broker(LocalBrokerConfig::default());
        for _ in 0..3 {
            b.publish(request("a", None)).await.unwrap();
        }
        b.publish(request("b", None)).await.unwrap();
        let seen = rec.seen.lock().clone();
        assert_eq!(
            seen,
            vec![
                ("a".into(), 1),
                ("a".into(), 2),
                ("a".into(), 3),
                ("b".into(), 1)
            ]
        );
    }

    #[tokio::test]
    async fn idempotent_publish_returns_first_offset_and_delivers_once() {
        let (b, rec) = broker(LocalBrokerConfig::default());
        let first = b.publish(request("a", Some("k"))).await.unwrap();
        let again = b.publish(request("a", Some("k"))).await.unwrap();
        assert_eq!(first.offset, again.offset);
        assert!(again.duplicate);
        assert_eq!(rec.seen.lock().len(), 1);
    }

    #[tokio::test]
    async fn dedup_table_refuses_rather_than_forgets() {
        let (b, _) = broker(LocalBrokerConfig {
            dedup_max_keys: 2,
            ..Default::default()
        });
        b.publish(request("a", Some("1"))).await.unwrap();
        b.publish(request("a", Some("2"))).await.unwrap();
        assert!(matches!(
            b.publish(request("a", Some("3"))).await,
            Err(BrokerError::Unavailable(_))
        ));
        // A repeat of a remembered key still answers.
        assert_eq!(b.publish(request("a", Some("1"))).await.unwrap().offset, 1);
    }

    #[tokio::test]
    async fn history_is_bounded_and_recovery_judges_coverage() {
        let (b, _) = broker(LocalBrokerConfig {
            history_size: 3,
            ..Default::default()
        });
        for _ in 0..5 {
            b.publish(request("a", None)).await.unwrap();
        }
        let page = b
            .history(
                "a",
                HistoryQuery {
                    since: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        let epoch = page.epoch.clone();
        let read = |since| {
            b.history(
                "a",
                HistoryQuery {
                    since: Some(since),
                    limit: 10,
                },
            )
        };
        let ok = RecoveryOutcome::from_page(read(3).await.unwrap(), 3, Some(&epoch));
        assert!(ok.recovered);
        assert_eq!(ok.publications.len(), 2);
        let gap = RecoveryOutcome::from_page(read(1).await.unwrap(), 1, Some(&epoch));
        assert!(!gap.recovered);
        assert_eq!(gap.publications.len(), 3);
        let other = RecoveryOutcome::from_page(read(3).await.unwrap(), 3, Some("x"));
        assert!(!other.recovered && other.publications.is_empty());
        let current = RecoveryOutcome::from_page(read(5).await.unwrap(), 5, None);
        assert!(current.recovered && current.publications.is_empty());
    }

    #[tokio::test]
    async fn idle_channels_are_forgotten_but_subscribed_ones_kept() {
        let (b, rec) = broker(LocalBrokerConfig {
            history_ttl: Duration::ZERO,
            dedup_window: Duration::ZERO,
            ..Default::default()
        });
        b.publish(request("a", None)).await.unwrap();
        rec.subscribed.lock().push("b".into());
        b.publish(request("b", None)).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.sweep(), 1);
        assert_eq!(b.channel_count(), 1);
        assert_eq!(b.publish(request("b", None)).await.unwrap().offset, 2);
    }
}
