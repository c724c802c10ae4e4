//! Everything one gateway node shares between its sessions and HTTP handlers, and the
//! node-level operations on it: joining and leaving channels (serialised per channel),
//! recovery, and periodic upkeep.

use crate::acl::{Acl, JoinLeave};
use crate::auth::Verifier;
use crate::config::Config;
use crate::conn::{Conn, Delivery};
use crate::hub::Hub;
use crate::metrics::metrics;
use crate::protocol::{CloseReason, SubscribeAnswer, subscribe_reply_frame};
use fanout::{Broker, BrokerError, ControlEvent, HistoryQuery, RecoveryOutcome};
use metrics_exporter_prometheus::PrometheusHandle;
use presence::{NodeInfo, NodeRegistry, Presence};
use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a node stays in the registry without a heartbeat.
pub const REGISTRY_TTL: Duration = Duration::from_secs(15);

/// How long after a channel's last local subscriber left the node tells the broker: a quick
/// re-subscribe (a reconnect, a page reload) then costs no broker round trip.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Shards of the per-channel async lock.
const LOCK_SHARDS: usize = 256;

/// The backends a node runs on, chosen at start (see `backends.rs`).
pub struct Backends {
    /// Message path.
    pub broker: Arc<dyn Broker>,
    /// Per-channel presence.
    pub presence: Arc<dyn Presence>,
    /// Live nodes.
    pub registry: Arc<dyn NodeRegistry>,
}

/// A sharded async lock per channel, guarding the set of channels the broker delivers to
/// this node. It is the one lock held across an `.await`: joins and leaves of one channel
/// (hub, broker interest, presence) take turns, so nobody reads history before the node's
/// broker subscription is live, and an unsubscribe re-checks under it before it goes out.
struct ChannelLocks {
    shards: Box<[tokio::sync::Mutex<HashSet<Arc<str>>>]>,
    hasher: RandomState,
}

impl ChannelLocks {
    fn new() -> Self {
        Self {
            shards: (0..LOCK_SHARDS).map(|_| Default::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    async fn lock(&self, channel: &str) -> tokio::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.shards[self.hasher.hash_one(channel) as usize % LOCK_SHARDS]
            .lock()
            .await
    }
}

/// What a subscribe asks of [`Node::recover`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovery<'a> {
    /// The client's last offset, to recover from.
    pub since: Option<u64>,
    /// The epoch of `since`.
    pub epoch: Option<&'a str>,
    /// A subscription token's expiry, Unix seconds, for the reply.
    pub expires: Option<u64>,
    /// The subscription has Fossil deltas (the reply says so).
    pub delta: bool,
}

/// The shared state of a node.
pub struct Node {
    /// Checked configuration.
    pub config: Config,
    /// Token verifier.
    pub verifier: Verifier,
    /// Access rules.
    pub acl: Acl,
    /// Local connection map.
    pub hub: Arc<Hub>,
    /// Message path.
    pub broker: Arc<dyn Broker>,
    /// Per-channel presence.
    pub presence: Arc<dyn Presence>,
    /// Live nodes.
    pub registry: Arc<dyn NodeRegistry>,
    /// The public WebSocket URL of this node.
    pub public_url: String,
    /// Prometheus renderer, when the recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
    /// The app's backend endpoints (connect, subscribe, publish, rpc... proxies).
    pub proxies: crate::proxy::Proxies,
    /// The webhooks' sender state, when they are on.
    pub webhooks: Option<Arc<crate::webhook::WebhookStats>>,
    locks: ChannelLocks,
    /// The live nodes as the registry last listed them (refreshed with each heartbeat), for
    /// counting misrouted connections without a registry read per handshake.
    peers: parking_lot::RwLock<Vec<NodeInfo>>,
    draining: AtomicBool,
    next_conn_id: AtomicU64,
    sessions: AtomicUsize,
    /// Woken when the last session is gone (the drain waits on it).
    sessions_gone: tokio::sync::Notify,
    /// Cancelled when the node shuts down: its background tasks stop.
    pub shutdown: CancellationToken,
    /// The node's background tasks (upkeep loops, delayed unsubscribes), awaited at shutdown.
    pub tasks: TaskTracker,
}

impl Node {
    /// A node on `backends`, whose broker delivers to `hub`.
    pub fn new(
        config: Config,
        public_url: String,
        prometheus: Option<PrometheusHandle>,
        hub: Arc<Hub>,
        backends: Backends,
    ) -> anyhow::Result<Arc<Node>> {
        Ok(Arc::new(Node {
            verifier: Verifier::new(&config.jwt)?,
            acl: Acl::new(config.namespaces.clone(), config.direct_messages),
            hub,
            broker: backends.broker,
            presence: backends.presence,
            registry: backends.registry,
            public_url,
            prometheus,
            proxies: crate::proxy::Proxies::new(&config.proxy),
            webhooks: config.webhook.as_ref().map(|_| Arc::default()),
            locks: ChannelLocks::new(),
            peers: parking_lot::RwLock::default(),
            draining: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            sessions: AtomicUsize::new(0),
            sessions_gone: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        }))
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sessions (accepted handshakes) not finished yet, closing ones included.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Counts a session in (`true`) or out (`false`); used by the session's registration.
    pub(crate) fn track_session(&self, started: bool) {
        if started {
            self.sessions.fetch_add(1, Ordering::Relaxed);
        } else if self.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sessions_gone.notify_waiters();
        }
    }

    /// Waits until no session is left, or `deadline`; returns whether none is left.
    pub async fn sessions_closed(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before the count is read: a last session leaving in between wakes it.
            let gone = self.sessions_gone.notified();
            if self.sessions.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                return self.sessions.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// Starts the node's background tasks: registry upkeep, presence heartbeats and
    /// presence-diff flushes. They run until [`shutdown`](Self::shutdown) is cancelled.
    pub fn spawn_background(self: &Arc<Self>) {
        self.spawn_until_shutdown(self.clone().run_maintenance());
        self.spawn_until_shutdown(self.clone().run_presence_heartbeat());
        self.spawn_until_shutdown(self.clone().run_presence_diffs());
        if let (Some(config), Some(stats)) = (&self.config.webhook, &self.webhooks) {
            let sender = crate::webhook::Sender::new(config.clone(), stats.clone());
            self.spawn_until_shutdown(sender.run(self.clone()));
        }
    }

    /// Runs `task` on the node's tracker until it ends or the node shuts down.
    fn spawn_until_shutdown(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Stops the background tasks and waits for them, at most `wait`.
    pub async fn stop_background(&self, wait: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(wait, self.tasks.wait()).await.is_err() {
            tracing::warn!("background tasks still running at exit");
        }
    }

    /// True once a drain started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready for new connections: not draining, and the backends reachable.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.is_healthy()
    }

    /// Starts draining: readiness turns 503, new sessions are refused, and every session is
    /// asked to close with `shutdown`.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        metrics().draining.set(1.0);
        self.hub.close_all(CloseReason::Shutdown);
    }

    /// Counts a connection of `user` as misrouted when its home node, among the nodes the
    /// registry last listed, is another one.
    pub fn note_route(&self, user: &str) {
        let peers = self.peers.read();
        if let Some(home) = crate::routing::home_node(user, &peers)
            && home.id != self.config.node_id
        {
            metrics().misrouted.increment(1);
        }
    }

    /// This node as the registry lists it.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.node_id.clone(),
            url: self.public_url.clone(),
            connections: self.hub.connection_count() as u64,
            capacity: self.config.limits.max_connections as u64,
        }
    }

    /// Adds `conn` to `channel`: the hub, then the broker's interest (the node's first local
    /// subscriber; awaited, so the subscription is live when this returns), then presence.
    /// Callers that recover history put the connection in recovery first, so that nothing
    /// delivered from here on is lost or doubled. `join_leave` says how the connection hears
    /// of presence changes (`None`: the namespace's default).
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        channel: &Arc<str>,
        name: Option<&str>,
        join_leave: Option<JoinLeave>,
    ) -> Result<(), BrokerError> {
        let mut live = self.locks.lock(channel).await;
        self.hub
            .subscribe(channel, conn, self.acl.join_leave(channel, join_leave));
        if !live.contains(channel) {
            if let Err(e) = self.broker.subscribe(channel).await {
                self.hub.unsubscribe(channel, conn);
                return Err(e);
            }
            live.insert(channel.clone());
        }
        if self.acl.presence_tracked(channel) {
            let first = self.presence.add(channel, &conn.user, name).await;
            let first = first.map(|f| f && self.acl.presence_enabled(channel));
            self.announce(first, || ControlEvent::Join {
                channel: channel.clone(),
                user: conn.user.clone(),
            })
            .await;
        }
        Ok(())
    }

    /// Removes `conn` from `channel`: the hub and presence at once; the broker's interest a
    /// little later, after checking again that no local subscriber came back meanwhile.
    pub async fn leave(self: &Arc<Self>, conn: &Arc<Conn>, channel: &Arc<str>) {
        let live = self.locks.lock(channel).await;
        let empty = self.hub.unsubscribe(channel, conn);
        if self.acl.presence_tracked(channel) {
            let last = self.presence.remove(channel, &conn.user).await;
            let last = last.map(|l| l && self.acl.presence_enabled(channel));
            self.announce(last, || ControlEvent::Leave {
                channel: channel.clone(),
                user: conn.user.clone(),
            })
            .await;
        }
        drop(live);
        if empty {
            let node = self.clone();
            let channel = channel.clone();
            self.spawn_until_shutdown(async move {
                tokio::time::sleep(UNSUBSCRIBE_DELAY).await;
                node.release(&channel).await;
            });
        }
    }

    /// Drops the broker's interest in `channel` if no local subscriber is left.
    async fn release(&self, channel: &Arc<str>) {
        let mut live = self.locks.lock(channel).await;
        if self.hub.subscriber_count(channel) == 0
            && live.remove(channel)
            && let Err(e) = self.broker.unsubscribe(channel).await
        {
            tracing::warn!(error = %e, %channel, "broker unsubscribe failed");
        }
    }

    /// Answers subscribe `id` of `conn` (already joined and in recovery for `channel`): reads
    /// the channel's position and, with `since`, what the client missed (a barrier: see the
    /// broker contract), then queues the reply, the replayed messages and the live ones
    /// buffered meanwhile, in that order. Returns the last publication the reply itself
    /// carries (Centrifugo's protocol, recovered), which is the client's base for the next
    /// delta.
    pub async fn recover(
        &self,
        conn: &Conn,
        id: i64,
        channel: &Arc<str>,
        wanted: Recovery<'_>,
    ) -> Result<Option<Arc<fanout::Publication>>, BrokerError> {
        let Recovery {
            since,
            epoch,
            expires,
            delta,
        } = wanted;
        let query = HistoryQuery {
            since: since.map(|s| s.min(u64::MAX - 1)),
            before: None,
            // As much as recent history holds, or an outbound queue's worth from the archive
            // (a recovery longer than that says `recovered: false`: reload).
            limit: if since.is_some() {
                self.broker
                    .history_capacity()
                    .max(self.config.limits.outbound_queue)
            } else {
                0
            },
        };
        let page = match self.broker.history(channel, query).await {
            Ok(page) => page,
            Err(e) => {
                conn.abort_recovery(channel);
                return Err(e);
            }
        };
        let latest = page.offset;
        let outcome = match since {
            Some(since) => RecoveryOutcome::from_page(page, since, epoch),
            None => RecoveryOutcome {
                publications: Vec::new(),
                offset: page.offset,
                epoch: page.epoch,
                recovered: false,
            },
        };
        // The last publication carried in a Centrifugo reply (v1 replays them as pushes).
        let base = match conn.encoding.is_centrifuge() && outcome.recovered {
            true => outcome.publications.last().cloned(),
            false => None,
        };
        let (reply, replay) = subscribe_reply_frame(
            conn.encoding,
            id,
            SubscribeAnswer {
                offset: outcome.offset,
                epoch: outcome.epoch,
                since,
                recovered: outcome.recovered,
                publications: outcome.publications,
                expires,
                delta,
            },
        );
        let replay = replay.into_iter().map(Delivery::new).collect();
        conn.finish_recovery(channel, reply, replay, latest);
        Ok(base)
    }

    /// Publishes the presence event when `changed` says the user's first connection arrived
    /// (or the last one left); presence failures are logged, never fatal to the session.
    async fn announce(
        &self,
        changed: Result<bool, presence::PresenceError>,
        event: impl FnOnce() -> ControlEvent,
    ) {
        match changed {
            Ok(true) => {
                if let Err(e) = self.broker.publish_control(event()).await {
                    tracing::warn!(error = %e, "presence event not published");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
    }

    /// Periodic upkeep: registry heartbeat, metrics upkeep.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REGISTRY_TTL / 3);
        loop {
            tick.tick().await;
            if !self.is_draining()
                && let Err(e) = self.registry.heartbeat(self.info()).await
            {
                tracing::warn!(error = %e, "node registry heartbeat failed");
            }
            if let Ok(nodes) = self.registry.nodes().await {
                *self.peers.write() = nodes;
            }
            if let Some(handle) = &self.prometheus {
                handle.run_upkeep();
            }
        }
    }

    /// Pushes the gathered presence changes as `presence_diff`s, every
    /// `--presence-diff-interval-ms`.
    pub async fn run_presence_diffs(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.presence_diff_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.hub.flush_presence(self.config.presence_diff_max);
        }
    }

    /// Presence heartbeats, every `--presence-heartbeat-secs`: keeps this node's entries
    /// alive (putting back lost ones) and announces the changes found.
    pub async fn run_presence_heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.presence_heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.presence.heartbeat().await {
                Ok(changes) => self.announce_changes(changes).await,
                Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
            }
        }
    }

    /// Pushes `join` / `leave` for presence changes a heartbeat found (a dead node's users
    /// left; this node's users are back after Redis lost them).
    pub async fn announce_changes(&self, changes: Vec<presence::Change>) {
        for change in changes {
            let (presence::Change::Joined { channel, .. } | presence::Change::Left { channel, .. }) =
                &change;
            // A channel tracked only for the webhooks has nobody to tell.
            if !self.acl.presence_enabled(channel) {
                continue;
            }
            let event = match change {
                presence::Change::Joined { channel, user } => ControlEvent::Join {
                    channel: channel.into(),
                    user: user.into(),
                },
                presence::Change::Left { channel, user } => ControlEvent::Leave {
                    channel: channel.into(),
                    user: user.into(),
                },
            };
            if let Err(e) = self.broker.publish_control(event).await {
                tracing::warn!(error = %e, "presence event not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::protocol::Encoding;
    use clap::Parser;
    use fanout::{
        HistoryPage, LocalBroker, LocalBrokerConfig, NodeCommand, PublishOutcome, PublishRequest,
    };
    use parking_lot::Mutex;
    use presence::{LocalPresence, LocalRegistry};

    /// The embedded broker behind a slow `subscribe`, recording what happened in which order.
    struct SlowBroker {
        delay: Duration,
        inner: LocalBroker,
        live: Mutex<HashSet<String>>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Broker for SlowBroker {
        async fn publish(&self, r: PublishRequest) -> Result<PublishOutcome, BrokerError> {
            self.inner.publish(r).await
        }
        async fn history(&self, c: &str, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
            let live = self.live.lock().contains(c);
            self.log.lock().push(format!("history live={live}"));
            self.inner.history(c, q).await
        }
        async fn subscribe(&self, c: &str) -> Result<(), BrokerError> {
            self.log.lock().push("subscribe start".into());
            tokio::time::sleep(self.delay).await;
            self.live.lock().insert(c.to_owned());
            self.log.lock().push("subscribe done".into());
            self.inner.subscribe(c).await
        }
        async fn unsubscribe(&self, c: &str) -> Result<(), BrokerError> {
            self.live.lock().remove(c);
            self.log.lock().push("unsubscribe".into());
            self.inner.unsubscribe(c).await
        }
        async fn publish_control(&self, e: ControlEvent) -> Result<(), BrokerError> {
            self.inner.publish_control(e).await
        }
        async fn command(&self, c: NodeCommand) -> Result<fanout::CommandReply, BrokerError> {
            self.inner.command(c).await
        }
        fn history_capacity(&self) -> usize {
            self.inner.history_capacity()
        }
    }

    fn node() -> (Arc<Node>, Arc<SlowBroker>) {
        node_with(Duration::from_millis(200))
    }

    fn node_with(delay: Duration) -> (Arc<Node>, Arc<SlowBroker>) {
        let config = Config::from_settings(Settings::parse_from(["gateway", "--dev"])).unwrap();
        let hub = Arc::new(Hub::new(&config.node_id));
        let broker = Arc::new(SlowBroker {
            delay,
            inner: LocalBroker::new(LocalBrokerConfig::default(), hub.clone()),
            live: Mutex::default(),
            log: Mutex::default(),
        });
        let backends = Backends {
            broker: broker.clone(),
            presence: Arc::new(LocalPresence::new()),
            registry: Arc::new(LocalRegistry::new(REGISTRY_TTL)),
        };
        let node = Node::new(config, "ws://test/ws".into(), None, hub, backends).unwrap();
        (node, broker)
    }

    fn conn(id: u64, user: &str) -> Arc<Conn> {
        Arc::new(Conn::new(id, user.into(), Encoding::Json, 64))
    }

    /// What a subscribe command does: recovery buffer, join, recover.
    async fn subscribe(node: &Arc<Node>, conn: &Arc<Conn>, channel: &Arc<str>) {
        conn.begin_recovery(channel.clone());
        node.join(conn, channel, None, None).await.unwrap();
        let wanted = Recovery {
            since: Some(0),
            ..Recovery::default()
        };
        node.recover(conn, 1, channel, wanted).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_reads_history_before_the_nodes_subscription_is_live() {
        let (node, broker) = node();
        let channel: Arc<str> = "room:a".into();
        let (a, b) = (conn(1, "alice"), conn(2, "bob"));
        let first = {
            let (node, a, channel) = (node.clone(), a.clone(), channel.clone());
            tokio::spawn(async move { subscribe(&node, &a, &channel).await })
        };
        // The second subscriber arrives while the first one's broker subscribe is in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        subscribe(&node, &b, &channel).await;
        first.await.unwrap();
        let log = broker.log.lock().clone();
        assert_eq!(
            log,
            [
                "subscribe start",
                "subscribe done",
                "history live=true",
                "history live=true"
            ]
        );
        assert_eq!(node.hub.subscriber_count(&channel), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_unsubscribe_checks_again_before_it_goes_out() {
        let (node, broker) = node();
        let channel: Arc<str> = "room:a".into();
        let (a, b) = (conn(1, "alice"), conn(2, "bob"));
        subscribe(&node, &a, &channel).await;
        node.leave(&a, &channel).await;
        // A new subscriber inside the delay keeps the node's subscription: no unsubscribe,
        // no second subscribe.
        tokio::time::sleep(UNSUBSCRIBE_DELAY / 2).await;
        subscribe(&node, &b, &channel).await;
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
        let count = |what: &str| broker.log.lock().iter().filter(|l| *l == what).count();
        assert_eq!((count("subscribe done"), count("unsubscribe")), (1, 0));
        assert!(broker.live.lock().contains("room:a"));
        // The last one out: the unsubscribe goes out after the delay.
        node.leave(&b, &channel).await;
        assert_eq!(count("unsubscribe"), 0);
        tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
        assert_eq!(count("unsubscribe"), 1);
        assert!(!broker.live.lock().contains("room:a"));
    }

    mod consistency {
        //! Any sequence of subscribe, unsubscribe, publish and disconnect leaves the hub,
        //! presence, the broker's interest and deliveries agreeing with a simple model.

        use super::*;
        use crate::conn::Outbound;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const CHANNELS: [&str; 3] = ["room:a", "room:b", "quiet:c"];
        /// Connection slots and their users (alice has two).
        const USERS: [&str; 4] = ["alice", "alice", "bob", "carol"];

        #[derive(Debug, Clone)]
        enum Op {
            Subscribe(usize, usize),
            Unsubscribe(usize, usize),
            Publish(usize),
            Disconnect(usize),
            Wait,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..4usize, 0..3usize).prop_map(|(c, ch)| Op::Subscribe(c, ch)),
                2 => (0..4usize, 0..3usize).prop_map(|(c, ch)| Op::Unsubscribe(c, ch)),
                2 => (0..3usize).prop_map(Op::Publish),
                1 => (0..4usize).prop_map(Op::Disconnect),
                1 => Just(Op::Wait),
            ]
        }

        struct World {
            node: Arc<Node>,
            broker: Arc<SlowBroker>,
            conns: Vec<Arc<Conn>>,
            /// The model: each slot's channels.
            subs: Vec<BTreeSet<usize>>,
            next_id: u64,
        }

        impl World {
            fn new() -> Self {
                let (node, broker) = node_with(Duration::from_millis(10));
                let mut world = World {
                    node,
                    broker,
                    conns: Vec::new(),
                    subs: vec![BTreeSet::new(); USERS.len()],
                    next_id: 1,
                };
                for slot in 0..USERS.len() {
                    let conn = world.fresh(slot);
                    world.conns.push(conn);
                }
                world
            }

            fn fresh(&mut self, slot: usize) -> Arc<Conn> {
                let c = conn(self.next_id, USERS[slot]);
                self.next_id += 1;
                self.node.hub.add_connection(&c, 10).unwrap();
                c
            }

            fn channel(ch: usize) -> Arc<str> {
                CHANNELS[ch].into()
            }

            /// Messages queued for `slot` since the last call, by channel.
            fn drain(&self, slot: usize) -> Vec<String> {
                let mut batch = std::collections::VecDeque::new();
                assert!(self.conns[slot].take_batch(&mut batch).is_none());
                batch
                    .into_iter()
                    .filter_map(|item| match item {
                        Outbound::Message(d) => Some(d.publication.channel.to_string()),
                        Outbound::Frame(_) => None,
                    })
                    .collect()
            }

            async fn apply(&mut self, op: &Op) {
                match *op {
                    Op::Subscribe(slot, ch) => {
                        if self.subs[slot].insert(ch) {
                            let conn = self.conns[slot].clone();
                            self.node
                                .join(&conn, &Self::channel(ch), None, None)
                                .await
                                .unwrap();
                        }
                    }
                    Op::Unsubscribe(slot, ch) => {
                        if self.subs[slot].remove(&ch) {
                            let conn = self.conns[slot].clone();
                            self.node.leave(&conn, &Self::channel(ch)).await;
                        }
                    }
                    Op::Publish(ch) => {
                        for slot in 0..USERS.len() {
                            self.drain(slot);
                        }
                        self.node
                            .broker
                            .publish(PublishRequest {
                                channel: Self::channel(ch),
                                from: "server".into(),
                                data: fanout::Payload::from_value(&serde_json::json!(1)),
                                idem: None,
                                archive: false,
                            })
                            .await
                            .unwrap();
                        for slot in 0..USERS.len() {
                            let got = self.drain(slot);
                            let expected: Vec<String> = if self.subs[slot].contains(&ch) {
                                vec![CHANNELS[ch].to_string()]
                            } else {
                                Vec::new()
                            };
                            assert_eq!(got, expected, "deliveries to slot {slot}");
                        }
                    }
                    Op::Disconnect(slot) => {
                        // What a session does at its end: leave everything, then go.
                        let conn = self.conns[slot].clone();
                        for ch in std::mem::take(&mut self.subs[slot]) {
                            self.node.leave(&conn, &Self::channel(ch)).await;
                        }
                        self.node.hub.remove_connection(&conn);
                        self.conns[slot] = self.fresh(slot);
                    }
                    Op::Wait => tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await,
                }
            }

            async fn check(&self, settled: bool) {
                for (ch, name) in CHANNELS.iter().enumerate() {
                    let holders: Vec<usize> = (0..USERS.len())
                        .filter(|s| self.subs[*s].contains(&ch))
                        .collect();
                    assert_eq!(
                        self.node.hub.subscriber_count(name),
                        holders.len(),
                        "{name}"
                    );
                    let members = self
                        .node
                        .presence
                        .members_page(name, None, 100)
                        .await
                        .unwrap();
                    let got: BTreeMap<String, u32> =
                        members.iter().map(|m| (m.user.clone(), m.conns)).collect();
                    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
                    if self.node.acl.presence_enabled(name) {
                        for s in &holders {
                            *expected.entry(USERS[*s].to_string()).or_default() += 1;
                        }
                    }
                    assert_eq!(got, expected, "presence of {name}");
                    let live = self.broker.live.lock().contains(*name);
                    if !holders.is_empty() {
                        assert!(live, "{name} has subscribers but no broker interest");
                    } else if settled {
                        assert!(!live, "{name} kept broker interest with no subscriber");
                    }
                }
                assert_eq!(self.node.hub.connection_count(), USERS.len());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn any_sequence_keeps_hub_presence_and_interest_consistent(
                ops in prop::collection::vec(op(), 1..40)
            ) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut world = World::new();
                    for op in &ops {
                        world.apply(op).await;
                        world.check(false).await;
                    }
                    tokio::time::sleep(UNSUBSCRIBE_DELAY * 2).await;
                    world.check(true).await;
                });
            }
        }
    }
}
