//! The embedded broker: offsets, history and dedup in process memory.

use crate::Publication;
use crate::archive::{
    Archive, ArchiveMark, ArchiveQueue, ArchiveStats, ArchivedPosition, ArchiverConfig,
    complete_page,
};
use crate::broker::{
    Broker, BrokerError, CommandReply, ControlEvent, Dispatcher, HistoryPage, HistoryQuery,
    NodeCommand, PublishOutcome, PublishRequest,
};
use crate::dedup::DedupTable;
use crate::history::History;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

/// Bounds of the embedded broker.
#[derive(Debug, Clone)]
pub struct LocalBrokerConfig {
    /// Most messages kept per channel.
    pub history_size: usize,
    /// Most payload bytes kept per channel (the newest message always stays).
    pub history_max_bytes: usize,
    /// Most payload bytes kept in all channels together: past it, a publish trims its own
    /// channel's oldest messages first.
    pub history_node_max_bytes: usize,
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
            history_max_bytes: 4 << 20,
            history_node_max_bytes: 256 << 20,
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
    /// How far the channel's publications have reached the archive: while any wait, the
    /// channel's state is kept (a reload from the archive would see an old offset), and
    /// history keeps what the archive does not hold yet (recovery never falls between them).
    mark: Arc<ArchiveMark>,
    /// When the state was created: the sweep spares young states, so that a caller between
    /// looking a channel up and locking it never holds a forgotten one.
    created: Instant,
}

impl ChannelState {
    fn new() -> Self {
        Self::resume(None)
    }

    /// A channel's state, continuing its archived position when there is one.
    fn resume(position: Option<ArchivedPosition>) -> Self {
        let (epoch, offset) = match position {
            Some(p) => (p.epoch, p.offset),
            None => (new_epoch(), 0),
        };
        Self {
            epoch,
            offset,
            history: History::default(),
            dedup: DedupTable::default(),
            mark: Arc::default(),
            created: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.history.is_empty() && self.dedup.is_empty() && self.mark.pending() == 0
    }
}

/// One shard of channels: their state (created by the first publish or history read) and
/// this node's interest (subscribe calls not yet undone). Interest is counted by the
/// channel name's hash, so that it costs no copy of the name (every connection's personal
/// channel has interest); two names sharing a hash only keep state longer, never shorter.
#[derive(Default)]
struct Shard {
    states: HashMap<Arc<str>, Arc<Mutex<ChannelState>>>,
    interest: HashMap<u64, u32>,
}

fn new_epoch() -> Arc<str> {
    crate::util::new_epoch().into()
}

/// How often the embedded broker expires history and dedup keys.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// In-process [`Broker`] for one node.
pub struct LocalBroker {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    config: LocalBrokerConfig,
    dispatcher: Arc<dyn Dispatcher>,
    /// Bytes held in every channel's history (see [`crate::history::cost`]).
    history_bytes: AtomicUsize,
    /// The archive and the queue to it, when messages are archived.
    archive: Option<(Arc<dyn Archive>, ArchiveQueue)>,
    /// How long the sweep spares a new channel state (see `ChannelState::created`).
    grace: Duration,
}

impl LocalBroker {
    /// A broker that hands every accepted message to `dispatcher`.
    pub fn new(config: LocalBrokerConfig, dispatcher: Arc<dyn Dispatcher>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            config,
            dispatcher,
            history_bytes: AtomicUsize::new(0),
            archive: None,
            grace: SWEEP_INTERVAL * 2,
        }
    }

    /// Like [`LocalBroker::start`], archiving every publication into `archive`: spawns the
    /// archive writer too. Channels resume their archived offset and epoch when first used.
    pub fn start_archived(
        config: LocalBrokerConfig,
        dispatcher: Arc<dyn Dispatcher>,
        archive: Arc<dyn Archive>,
        archiver: ArchiverConfig,
    ) -> Arc<Self> {
        let (queue, writer) = ArchiveQueue::new(archive.clone(), archiver);
        tokio::spawn(writer.run());
        let mut broker = Self::new(config, dispatcher);
        broker.archive = Some((archive, queue));
        Self::spawn_sweep(Arc::new(broker))
    }

    /// Payload bytes held in history, all channels together.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes.load(Ordering::Relaxed)
    }

    fn account(&self, delta: isize) {
        if delta >= 0 {
            self.history_bytes
                .fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.history_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// A broker that runs its own upkeep: a task sweeps it every few seconds for as long as
    /// the broker lives. Call inside a tokio runtime.
    pub fn start(config: LocalBrokerConfig, dispatcher: Arc<dyn Dispatcher>) -> Arc<Self> {
        Self::spawn_sweep(Arc::new(Self::new(config, dispatcher)))
    }

    fn spawn_sweep(broker: Arc<Self>) -> Arc<Self> {
        let weak = Arc::downgrade(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { break };
                broker.sweep();
            }
        });
        broker
    }

    /// The channel's shard and name hash.
    fn shard(&self, channel: &str) -> (&RwLock<Shard>, u64) {
        let hash = self.hasher.hash_one(channel);
        (&self.shards[hash as usize % SHARDS], hash)
    }

    fn channel(&self, channel: &str) -> Arc<Mutex<ChannelState>> {
        let (shard, _) = self.shard(channel);
        if let Some(state) = shard.read().states.get(channel) {
            return state.clone();
        }
        shard
            .write()
            .states
            .entry(Arc::from(channel))
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new())))
            .clone()
    }

    /// The channel's state, created from its archived position the first time (with an
    /// archive; when the archive cannot be read, with a new epoch).
    async fn load(&self, channel: &str) -> Result<Arc<Mutex<ChannelState>>, BrokerError> {
        let Some((archive, _)) = &self.archive else {
            return Ok(self.channel(channel));
        };
        let (shard, _) = self.shard(channel);
        if let Some(state) = shard.read().states.get(channel) {
            return Ok(state.clone());
        }
        // With the database down, a new epoch rather than refused publishes: subscribers see
        // the epoch change and reload (availability first; SQLite is rarely down).
        let position = archive.position(channel).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, %channel, "archived position unreadable; new epoch");
            None
        });
        Ok(shard
            .write()
            .states
            .entry(Arc::from(channel))
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::resume(position))))
            .clone())
    }

    /// Expires history and dedup keys and forgets idle channels: no history, no dedup key
    /// and no interest from this node (a subscribed channel keeps its offset and epoch, so
    /// its subscribers never see offsets restart). Returns how many channels it forgot.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.write();
            let Shard { states, interest } = &mut *guard;
            states.retain(|channel, state| {
                let mut state = state.lock();
                let keep_after = state.mark.keep_after();
                let dropped = state
                    .history
                    .expire(now, self.config.history_ttl, keep_after);
                self.account(-(dropped as isize));
                state.dedup.expire(now, self.config.dedup_window);
                let keep = !state.is_empty()
                    || now.duration_since(state.created) < self.grace
                    || interest.contains_key(&self.hasher.hash_one(&**channel));
                forgotten += usize::from(!keep);
                keep
            });
        }
        forgotten
    }

    /// Number of channels with state.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().states.len()).sum()
    }
}

#[async_trait::async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        // Room in the archive queue first: once the offset is given, nothing may fail.
        let permit = match &self.archive {
            Some((_, queue)) if request.archive => Some(queue.reserve().await?),
            _ => None,
        };
        let state = self.load(&request.channel).await?;
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
                .map_err(|_| BrokerError::DedupFull)?;
        }
        state.offset += 1;
        let publication = Arc::new(Publication {
            channel: request.channel,
            offset: state.offset,
            epoch: state.epoch.clone(),
            from: request.from,
            data: request.data,
            ts: crate::util::unix_millis(),
        });
        // What the archive does not hold yet stays in history whatever the bounds (the
        // archive queue holds it in memory anyway, and bounds it).
        let keep_after = state.mark.keep_after();
        let mut delta = -(state
            .history
            .expire(now, self.config.history_ttl, keep_after) as isize);
        delta += state.history.push(
            now,
            publication.clone(),
            self.config.history_size,
            self.config.history_max_bytes,
            keep_after,
        );
        self.account(delta);
        // Past the node's bound, this channel gives back its oldest first (its newest
        // message included, when it is all there is: recovery then says so).
        while self.history_bytes() > self.config.history_node_max_bytes {
            match state.history.pop_front(keep_after) {
                0 => break,
                dropped => self.account(-(dropped as isize)),
            }
        }
        if let Some(key) = request.idem {
            state.dedup.insert(key, publication.offset, now);
        }
        if let Some(permit) = permit {
            permit.send(publication.clone(), &state.mark);
        }
        // Dispatch under the channel lock: that is what keeps delivery in offset order and
        // makes every history read a barrier (the contract's recovery guarantee).
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
        let query = query.clamped();
        let state = self.load(channel).await?;
        let page = {
            let mut state = state.lock();
            let keep_after = state.mark.keep_after();
            let dropped = state
                .history
                .expire(Instant::now(), self.config.history_ttl, keep_after);
            self.account(-(dropped as isize));
            HistoryPage {
                publications: state.history.read(query.since, query.before, query.limit),
                offset: state.offset,
                epoch: state.epoch.clone(),
            }
        };
        // Outside the channel lock: the archive is slow next to memory. Whatever it adds is
        // older than what memory held, so the barrier still holds.
        match &self.archive {
            Some((archive, _)) => complete_page(archive.as_ref(), channel, query, page)
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string())),
            None => Ok(page),
        }
    }

    /// In process, delivery needs no setup (publish dispatches to the node directly); the
    /// interest only keeps the channel's offset and epoch from being swept.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let (shard, hash) = self.shard(channel);
        *shard.write().interest.entry(hash).or_default() += 1;
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let (shard, hash) = self.shard(channel);
        let mut shard = shard.write();
        if let Some(n) = shard.interest.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                shard.interest.remove(&hash);
            }
        }
        Ok(())
    }

    async fn publish_control(&self, event: ControlEvent) -> Result<(), BrokerError> {
        self.dispatcher.dispatch_control(&event);
        Ok(())
    }

    async fn command(&self, command: NodeCommand) -> Result<CommandReply, BrokerError> {
        let reply = self.dispatcher.dispatch_command(&command);
        Ok(CommandReply::merge(&command, vec![reply]))
    }

    fn stats(&self) -> crate::DeliveryStats {
        crate::DeliveryStats {
            history_bytes: self.history_bytes() as u64,
            ..Default::default()
        }
    }

    fn history_capacity(&self) -> usize {
        self.config.history_size
    }

    fn archive_stats(&self) -> Option<Arc<ArchiveStats>> {
        self.archive
            .as_ref()
            .map(|(_, queue)| queue.stats().clone())
    }

    async fn flush_archive(&self, deadline: std::time::Instant) -> u64 {
        match &self.archive {
            Some((_, queue)) => queue.flush(deadline).await,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecoveryOutcome;

    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(String, u64)>>,
    }

    impl Dispatcher for Recorder {
        fn dispatch(&self, p: &Arc<Publication>) {
            self.seen.lock().push((p.channel.to_string(), p.offset));
        }
        fn dispatch_control(&self, _: &ControlEvent) {}
        fn dispatch_command(&self, _: &NodeCommand) -> crate::CommandReply {
            crate::CommandReply::Count(0)
        }
        fn lost(&self, _: &str) {}
    }

    fn request(channel: &str, idem: Option<&str>) -> PublishRequest {
        PublishRequest {
            channel: channel.into(),
            from: "alice".into(),
            data: crate::Payload::from_value(&serde_json::json!({"t": 1})),
            idem: idem.map(str::to_owned),
            archive: true,
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
            Err(BrokerError::DedupFull)
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
                    before: None,
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
                    before: None,
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
        let (mut b, _) = broker(LocalBrokerConfig {
            history_ttl: Duration::ZERO,
            dedup_window: Duration::ZERO,
            ..Default::default()
        });
        b.grace = Duration::ZERO;
        b.publish(request("a", None)).await.unwrap();
        b.subscribe("b").await.unwrap();
        b.publish(request("b", None)).await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.sweep(), 1);
        assert_eq!(b.channel_count(), 1);
        assert_eq!(b.publish(request("b", None)).await.unwrap().offset, 2);
        // Interest gone: the channel is forgotten at the next sweep.
        b.unsubscribe("b").await.unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.sweep(), 1);
        assert_eq!(b.channel_count(), 0);
    }
}
