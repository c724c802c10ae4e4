//! The chaos audit: chat traffic across three nodes on a durable Redis with PostgreSQL
//! archiving while faults strike in rounds: a node SIGKILLed (its address stays in the
//! clients' list, so they dial it while it is dead) and restarted; Redis frozen (SIGSTOP)
//! while a node is killed too (two faults at once); Redis SIGKILLed and restarted from its
//! append-only file; PostgreSQL a black hole; one node partitioned from Redis while its
//! clients still reach it. The black hole and the partition drop packets in the kernel
//! (iptables, when this runs as root; else the proxy holds the bytes, and says so). Each fault
//! is checked to have taken effect.
//!
//! Clients reconnect with backoff and recover by offset, as the web demo's client does;
//! publishers retry with the same idempotency key until acknowledged, each publish within a
//! deadline. At the end every acknowledged message is audited: received by every subscriber
//! exactly once, in order, with its payload and its epoch, and in the archive exactly once
//! (channel, epoch, offset and payload, row by row), nothing else.
//!
//! Each fault lasts until it has shown its effect, and the next waits until publishes are
//! acknowledged again: a round takes as long as the gateway needs (about 15 s here).
//! `CHAOS_ROUNDS` (default 1) is the least number of rounds, `CHAOS_SECS` (default 0) the
//! least running time: rounds go on until both are met. `CHAOS_SEED` (default 1) orders each
//! round's faults and draws the traffic between them. `bench/chaos.sh` runs it for 10
//! minutes. The figures are printed as one `chaos audit:` line.

use e2e::partition::{self, PortBlackHole};
use e2e::{
    ArchivedRow, Gateway, PgDatabase, RedisServer, TcpProxy, Token, eventually, metric, secs,
};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "chaos:room";
const NODES: usize = 3;
const SUBSCRIBERS: usize = 6;
const PUBLISHERS: usize = 3;
/// Messages per second per publisher.
const RATE: u64 = 20;
/// Longest wait for one publish to be acknowledged, retries included: the longest fault
/// lasts a few seconds.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

fn token(user: &str) -> String {
    // A channel outside any namespace: granted by the token, no presence traffic.
    Token::new(user).channels(&["chaos:*"]).exp_in(3600).hs256()
}

/// Every address a node ever listened on: a killed node's stays (clients keep dialing it and
/// fail over), a restarted one's is added.
type Addrs = Arc<Mutex<Vec<String>>>;

fn pick(addrs: &Addrs, attempt: usize) -> String {
    let addrs = addrs.lock().unwrap();
    addrs[attempt % addrs.len()].clone()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Publishes acknowledged, every publisher together.
static ACKED: AtomicU64 = AtomicU64::new(0);

/// Dials that failed, every client together (a dead node refuses the connection).
static FAILED_DIALS: AtomicUsize = AtomicUsize::new(0);

/// Dials `addr` and reads the welcome.
async fn dial(addr: &str, user: &str) -> Option<Ws> {
    let url = format!("ws://{addr}/ws?token={}", token(user));
    let dialed = async {
        let (mut ws, _) = tokio::time::timeout(secs(3), tokio_tungstenite::connect_async(url))
            .await
            .ok()?
            .ok()?;
        // The welcome push.
        match tokio::time::timeout(secs(3), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => Some(ws),
            _ => None,
        }
    };
    let ws = dialed.await;
    if ws.is_none() {
        FAILED_DIALS.fetch_add(1, Ordering::SeqCst);
    }
    ws
}

/// Where a client dials: the address it was last connected to first (as a client behind a
/// fixed URL does: so it dials a node that died under it), then, after a failed dial, the
/// next address of the list.
#[derive(Debug)]
struct Dialer {
    addrs: Addrs,
    next: usize,
    last: Option<String>,
}

impl Dialer {
    fn new(addrs: Addrs, start: usize) -> Self {
        Self {
            addrs,
            next: start,
            last: None,
        }
    }

    async fn connect(&mut self, user: &str) -> Option<Ws> {
        let addr = match self.last.take() {
            Some(addr) => addr,
            None => {
                self.next += 1;
                pick(&self.addrs, self.next - 1)
            }
        };
        let ws = dial(&addr, user).await;
        if ws.is_some() {
            self.last = Some(addr);
        }
        ws
    }
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((100u64 << attempt.min(4)).min(1500))
}

/// One delivered message: offset, epoch, payload.
type Delivered = (u64, String, Value);

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// Messages received, in arrival order (after the first subscribe).
    messages: Vec<Delivered>,
    /// The offset the first subscribe started at.
    start: Option<u64>,
    /// Every epoch a subscribe reply or a message named.
    epochs: HashSet<String>,
    reconnects: usize,
    /// Subscribes answered `recovered: false` after a reconnect.
    not_recovered: usize,
}

/// A subscriber that stays subscribed through everything: on any failure it reconnects (to
/// the next address, with backoff) and subscribes again with `since`/`epoch`. It ends once
/// it has seen the offset `stop` names.
async fn subscriber(index: usize, addrs: Addrs, stop: watch::Receiver<u64>) -> Seen {
    let name = format!("sub{index}");
    let mut seen = Seen::default();
    let mut last: Option<(String, u64)> = None;
    let done = |last: &Option<(String, u64)>| {
        let top = *stop.borrow();
        top > 0 && last.as_ref().is_some_and(|(_, o)| *o >= top)
    };
    // Spread over the nodes: each client starts on another one.
    let mut dialer = Dialer::new(addrs, index);
    let mut failures = 0;
    loop {
        if done(&last) {
            return seen;
        }
        let Some(mut ws) = dialer.connect(&name).await else {
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
            continue;
        };
        failures = 0;
        let mut command = json!({"id": 1, "op": "subscribe", "channel": CHANNEL});
        if let Some((epoch, offset)) = &last {
            command["since"] = json!(offset);
            command["epoch"] = json!(epoch);
        }
        if ws.send(Message::text(command.to_string())).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::time::timeout(secs(2), ws.next()).await;
            let text = match frame {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Err(_) if done(&last) => return seen,
                Err(_) => continue,
                Ok(Some(Err(_))) | Ok(None) => break,
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
            match (v["op"].as_str(), v["id"].as_i64()) {
                (_, Some(1)) => {
                    let Some(ok) = v.get("ok") else {
                        // `unavailable` while Redis is away: try again from the start.
                        break;
                    };
                    let epoch = ok["epoch"].as_str().unwrap_or_default().to_string();
                    let offset = ok["offset"].as_u64().unwrap_or(0);
                    match &last {
                        None => {
                            seen.start = Some(offset);
                            last = Some((epoch.clone(), offset));
                        }
                        Some(_) if ok["recovered"] != true => {
                            seen.not_recovered += 1;
                            last = Some((epoch.clone(), offset));
                        }
                        Some(_) => {}
                    }
                    seen.epochs.insert(epoch);
                }
                (Some("message"), None) => {
                    let offset = v["offset"].as_u64().expect("offset");
                    let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                    seen.messages
                        .push((offset, epoch.clone(), v["data"].clone()));
                    seen.epochs.insert(epoch.clone());
                    if last.as_ref().is_none_or(|(_, o)| offset > *o) {
                        last = Some((epoch, offset));
                    }
                }
                (Some("unsubscribe"), None) => break,
                (Some("disconnect"), None) => break,
                _ => {}
            }
        }
        seen.reconnects += 1;
    }
}

/// What one publisher got acknowledged: offset, epoch and the payload it sent.
type Acks = Vec<Delivered>;

/// Publishes `RATE` messages a second until `stop`, each with its own idempotency key,
/// retrying (reconnecting as needed) until acknowledged; panics when one is not within
/// [`PUBLISH_DEADLINE`].
async fn publisher(index: usize, addrs: Addrs, stop: watch::Receiver<u64>) -> Acks {
    let name = format!("pub{index}");
    let mut acks = Vec::new();
    let mut ws: Option<Ws> = None;
    let mut dialer = Dialer::new(addrs, index);
    let mut failures = 0;
    let mut id = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut n = 0u64;
    while *stop.borrow() == 0 {
        tick.tick().await;
        let idem = format!("{name}-{n}");
        let data = json!({"from": name, "n": n});
        let deadline = Instant::now() + PUBLISH_DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "{name}: publish {n} not acknowledged within {PUBLISH_DEADLINE:?}"
            );
            if ws.is_none() {
                ws = dialer.connect(&name).await;
                if ws.is_none() {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
                failures = 0;
            }
            let conn = ws.as_mut().expect("connected");
            id += 1;
            let command = json!({"id": id, "op": "publish", "channel": CHANNEL,
                "data": data, "idem": idem});
            if conn.send(Message::text(command.to_string())).await.is_err() {
                ws = None;
                continue;
            }
            let reply = loop {
                match tokio::time::timeout(secs(5), conn.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                        if v["id"].as_i64() == Some(id) {
                            break Some(v);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break None,
                }
            };
            match reply {
                Some(v) if v.get("ok").is_some() => {
                    let offset = v["ok"]["offset"].as_u64().expect("offset");
                    let epoch = v["ok"]["epoch"].as_str().unwrap_or_default().to_string();
                    acks.push((offset, epoch, data));
                    ACKED.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                None => ws = None,
            }
        }
        n += 1;
    }
    acks
}

async fn start_node(redis_url: &str, database_url: &str, i: usize) -> Gateway {
    Gateway::builder()
        .arg("--redis-url", redis_url)
        .arg("--database-url", database_url)
        .arg("--node-id", format!("chaos-{i}"))
        .arg("--publish-rate", 100000)
        .arg("--publish-burst", 100000)
        .arg("--position-check-secs", 1)
        .arg("--drain-timeout-secs", 1)
        .start()
        .await
}

/// The faults of one round.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL a node with clients; restart it once one of them has dialed it, dead, and
    /// failed.
    KillNode,
    /// Freeze Redis; once a node has noticed, SIGKILL a node with clients; thaw Redis and
    /// restart the node once one of its clients has failed to dial it.
    FreezeRedisAndKillNode,
    /// SIGKILL Redis and restart it from its append-only file.
    KillRedis,
    /// PostgreSQL a black hole until an archiver's call to it has failed.
    BlackHolePostgres,
    /// Node 2 partitioned from Redis until it says Redis is down; its clients still reach it.
    PartitionNodeFromRedis,
}

impl Fault {
    /// Its name in the closing line, counted.
    fn label(self) -> &'static str {
        match self {
            Fault::KillNode => "node kills",
            Fault::FreezeRedisAndKillNode => "Redis freezes with a node kill",
            Fault::KillRedis => "Redis kills",
            Fault::BlackHolePostgres => "PostgreSQL black holes",
            Fault::PartitionNodeFromRedis => "node-Redis partitions",
        }
    }
}

/// The deployment under test and the faults' tools.
struct Cluster {
    redis: RedisServer,
    pg_proxy: TcpProxy,
    pg_url: String,
    redis_proxy: TcpProxy,
    nodes: Vec<Gateway>,
    addrs: Addrs,
    /// Kernel packet drops where this runs as root with iptables; else the proxies hold.
    kernel: bool,
    /// Faults struck, by kind, for the closing line.
    struck: BTreeMap<&'static str, usize>,
}

/// The port of a `host:port` address.
fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

impl Cluster {
    fn redis_url(&self, i: usize) -> String {
        if i == 2 {
            format!("redis://{}", self.redis_proxy.addr())
        } else {
            self.redis.url()
        }
    }

    /// A node with clients on it, drawn by `rng` (its clients then dial it while it is dead).
    async fn busy_node(&self, rng: &mut StdRng) -> usize {
        let mut busy = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if metric(node.addr(), "gateway_connections")
                .await
                .unwrap_or(0.0)
                > 0.0
            {
                busy.push(i);
            }
        }
        assert!(!busy.is_empty(), "no node has a client");
        busy[rng.random_range(0..busy.len())]
    }

    /// Kills node `i` and checks the process is gone; its address stays in the list.
    async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.send_signal("KILL");
        assert!(
            node.wait_exit(secs(10)).await.is_some(),
            "node {i} still running after SIGKILL"
        );
    }

    async fn restart(&mut self, i: usize) {
        let node = start_node(&self.redis_url(i), &self.pg_url, i).await;
        self.addrs.lock().unwrap().push(node.addr().to_string());
        // The dead one's output was checked for panics when it is dropped here.
        self.nodes[i] = node;
    }

    /// Holds a link's traffic: kernel drops on the proxy's port, or the proxy itself.
    fn black_hole(&self, proxy: &TcpProxy) -> Option<PortBlackHole> {
        if self.kernel {
            Some(PortBlackHole::new(port(proxy.addr())))
        } else {
            proxy.black_hole();
            None
        }
    }

    /// Sum of a counter over the live nodes.
    async fn total(&self, counter: &str) -> f64 {
        let mut total = 0.0;
        for node in &self.nodes {
            total += metric(node.addr(), counter).await.unwrap_or(0.0);
        }
        total
    }

    /// Whether some node says Redis is down.
    async fn a_node_lost_redis(&self) -> bool {
        for node in &self.nodes {
            if metric(node.addr(), "gateway_broker_up").await == Some(0.0) {
                return true;
            }
        }
        false
    }

    /// Kills a node with clients, waits until one of them has dialed it dead, and returns it
    /// (for a restart).
    async fn kill_a_busy_node(&mut self, rng: &mut StdRng) -> usize {
        let i = self.busy_node(rng).await;
        let dials = FAILED_DIALS.load(Ordering::SeqCst);
        self.kill(i).await;
        eventually(
            &format!("a client dials node {i} while it is dead"),
            secs(20),
            async || FAILED_DIALS.load(Ordering::SeqCst) > dials,
        )
        .await;
        i
    }

    async fn strike(&mut self, fault: Fault, rng: &mut StdRng) {
        eprintln!("chaos: {fault:?}");
        match fault {
            Fault::KillNode => {
                let i = self.kill_a_busy_node(rng).await;
                self.restart(i).await;
            }
            Fault::FreezeRedisAndKillNode => {
                self.redis.pause();
                eventually("a node notices Redis frozen", secs(20), async || {
                    self.a_node_lost_redis().await
                })
                .await;
                let i = self.kill_a_busy_node(rng).await;
                self.redis.resume();
                self.restart(i).await;
            }
            Fault::KillRedis => self.redis.kill_and_restart().await,
            Fault::BlackHolePostgres => {
                let before = self.total("gateway_archive_failures_total").await;
                let hole = self.black_hole(&self.pg_proxy);
                // It took effect: an archiver's call went unanswered and failed (each call is
                // bounded at 5 s), and packets were dropped.
                eventually(
                    "an archive call fails while PostgreSQL is a black hole",
                    secs(30),
                    async || self.total("gateway_archive_failures_total").await > before,
                )
                .await;
                if let Some(hole) = &hole {
                    assert!(hole.dropped_packets() > 0, "no PostgreSQL packet dropped");
                }
                drop(hole);
                self.pg_proxy.restore();
            }
            Fault::PartitionNodeFromRedis => {
                let hole = self.black_hole(&self.redis_proxy);
                // It took effect: node 2 says Redis is down, and its clients still reach it
                // (this reads its metrics over HTTP).
                let node = self.nodes[2].addr().to_string();
                eventually(
                    "node 2 notices the partition from Redis",
                    secs(20),
                    async || metric(&node, "gateway_broker_up").await == Some(0.0),
                )
                .await;
                if let Some(hole) = &hole {
                    assert!(hole.dropped_packets() > 0, "no Redis packet dropped");
                }
                drop(hole);
                self.redis_proxy.restore();
            }
        }
        *self.struck.entry(fault.label()).or_default() += 1;
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn chaos_audit_loses_nothing_accepted() {
    let rounds = env_u64("CHAOS_ROUNDS", 1).max(1);
    let least = secs(env_u64("CHAOS_SECS", 0));
    let seed = env_u64("CHAOS_SEED", 1);
    // A round takes about 15 s; the whole run must end well within this.
    let limit = secs(180 + rounds * 90) + least;
    tokio::time::timeout(limit, audit(rounds, least, seed))
        .await
        .unwrap_or_else(|_| panic!("the chaos run did not finish within {limit:?}"));
}

async fn audit(least_rounds: u64, least: Duration, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let redis = RedisServer::start_durable().await;
    let db = PgDatabase::create().await;
    let pg_proxy = TcpProxy::start(db.host_port()).await;
    let pg_url = db.url_via(pg_proxy.addr());
    // Node 2 reaches Redis through a proxy, to be partitioned.
    let redis_proxy = TcpProxy::start(&format!("127.0.0.1:{}", redis.port())).await;
    let kernel = partition::available();
    let mut cluster = Cluster {
        redis,
        pg_proxy,
        pg_url,
        redis_proxy,
        nodes: Vec::new(),
        addrs: Addrs::default(),
        kernel,
        struck: BTreeMap::new(),
    };
    for i in 0..NODES {
        let node = start_node(&cluster.redis_url(i), &cluster.pg_url, i).await;
        cluster.addrs.lock().unwrap().push(node.addr().to_string());
        cluster.nodes.push(node);
    }
    eprintln!(
        "chaos: seed {seed}, at least {least_rounds} round(s) and {least:?}, faults by {}",
        if kernel {
            "kernel packet drops (iptables)"
        } else {
            "the proxies holding traffic (no iptables or not root)"
        }
    );
    let (stop_tx, stop_rx) = watch::channel(0u64);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| tokio::spawn(subscriber(i, cluster.addrs.clone(), stop_rx.clone())))
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publisher(i, cluster.addrs.clone(), stop_rx.clone())))
        .collect();
    // The faults start once traffic flows, and each waits for traffic to flow again after
    // the one before (a number of acknowledged publishes drawn from the seed).
    let flowing = async |more: u64| {
        let from = ACKED.load(Ordering::SeqCst);
        eventually("publishes acknowledged again", secs(60), async || {
            ACKED.load(Ordering::SeqCst) >= from + more
        })
        .await;
    };
    flowing(60).await;
    let mut faults = [
        Fault::KillNode,
        Fault::FreezeRedisAndKillNode,
        Fault::KillRedis,
        Fault::BlackHolePostgres,
        Fault::PartitionNodeFromRedis,
    ];
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < least_rounds || started.elapsed() < least {
        rounds += 1;
        faults.shuffle(&mut rng);
        for fault in faults {
            cluster.strike(fault, &mut rng).await;
            flowing(rng.random_range(60..180)).await;
        }
    }
    let faulting = started.elapsed();

    // Stop publishing; subscribers stop once they saw the last acknowledged offset.
    stop_tx.send_replace(u64::MAX);
    let mut acks: Acks = Vec::new();
    for p in publishers {
        acks.extend(p.await.expect("publisher"));
    }
    let top = acks.iter().map(|(o, _, _)| *o).max().unwrap_or(0);
    stop_tx.send_replace(top);
    let mut seen = Vec::new();
    for s in subscribers {
        let s = tokio::time::timeout(secs(60), s)
            .await
            .expect("every subscriber catches up within a minute")
            .expect("subscriber");
        seen.push(s);
    }

    // The audit: one epoch, contiguous offsets, each acknowledged once.
    let epochs: HashSet<&String> = acks.iter().map(|(_, e, _)| e).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout: {epochs:?}");
    let epoch = acks[0].1.clone();
    let acked: BTreeMap<u64, &Value> = acks.iter().map(|(o, _, d)| (*o, d)).collect();
    assert_eq!(
        acked.len(),
        acks.len(),
        "every acknowledged publish has its own offset"
    );
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=top).collect::<Vec<_>>(),
        "acknowledged offsets are contiguous from 1"
    );
    let (mut lost, mut duplicated, mut reordered, mut delivered) = (0usize, 0usize, 0usize, 0usize);
    let (mut reconnects, mut not_recovered) = (0, 0);
    let failed_dials = FAILED_DIALS.load(Ordering::SeqCst);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.epochs,
            HashSet::from([epoch.clone()]),
            "subscriber {i} saw another epoch (no fault here loses Redis's data)"
        );
        let start = s.start.unwrap_or(0);
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut high = 0;
        for (o, e, data) in &s.messages {
            assert_eq!(e, &epoch, "subscriber {i}, offset {o}");
            assert_eq!(
                acked.get(o).copied(),
                Some(data),
                "subscriber {i}: the payload at offset {o} is the one acknowledged there"
            );
            *counts.entry(*o).or_default() += 1;
            if *o < high {
                reordered += 1;
            }
            high = high.max(*o);
        }
        delivered += s.messages.len();
        duplicated += counts
            .values()
            .filter(|&&n| n > 1)
            .map(|n| n - 1)
            .sum::<usize>();
        lost += acked
            .keys()
            .filter(|o| **o > start && !counts.contains_key(o))
            .count();
        reconnects += s.reconnects;
        not_recovered += s.not_recovered;
    }
    // Everything reaches the archive, once, and nothing else does: row by row.
    let count = format!("SELECT COUNT(*) FROM gw_messages WHERE channel = '{CHANNEL}'");
    eventually(
        &format!("{} acknowledged messages archived", acked.len()),
        secs(90),
        async || db.scalar(&count).await as usize >= acked.len(),
    )
    .await;
    let rows = db.messages().await;
    let expected: Vec<ArchivedRow> = acked
        .iter()
        .map(|(o, d)| (CHANNEL.to_string(), epoch.clone(), *o, (*d).clone()))
        .collect();
    let struck: Vec<String> = cluster
        .struck
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    eprintln!(
        "chaos audit: seed {seed}, {rounds} round(s) of faults in {:.0?} ({}); acked {} \
         (epochs {}), delivered {delivered} to {SUBSCRIBERS} subscribers, lost {lost}, \
         duplicated {duplicated}, reordered {reordered}, archived {} rows; reconnects \
         {reconnects}, failed dials {failed_dials}, recovered:false {not_recovered}",
        faulting,
        struck.join(", "),
        acked.len(),
        epochs.len(),
        rows.len(),
    );
    assert_eq!((lost, duplicated, reordered), (0, 0, 0));
    assert_eq!(not_recovered, 0, "every reconnect recovered");
    assert!(
        reconnects >= 2,
        "the node kills moved subscribers: {reconnects} reconnects"
    );
    assert_eq!(rows.len(), expected.len(), "archived rows");
    assert_eq!(
        rows, expected,
        "the archive holds every acknowledged message once"
    );
}
