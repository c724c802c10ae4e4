//! Gateway nodes on a real Redis Cluster (three primaries, replicas where a test fails one
//! over) while slots move and primaries fail: what the nodes acknowledged is delivered once,
//! in order, on every node, or the subscribers are told to reload where Redis truly lost it.
//! The tests find where a channel lives the way an operator would: `SCAN` for its keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::{Client, Gateway, RedisCluster, api_post, as_u64, metric, secs};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{messages, node, offsets, tok};

/// Channels the tests publish on; at least one of them lives on each primary.
const CHANNELS: usize = 12;

fn channel(i: usize) -> String {
    format!("room:rc{i}")
}

/// Publishes `body` through `addr`'s API, again with its idempotency key while the cluster
/// answers 503 (a slot mid-move, a failover), for at most 20 s; returns the ack.
async fn publish_until_accepted(addr: &str, body: Value) -> Value {
    let deadline = Instant::now() + secs(20);
    loop {
        let r = api_post(addr, "/api/publish", body.clone()).await;
        if r.status == 200 {
            return r.json();
        }
        assert_eq!(r.status, 503, "publish: {r:?}");
        assert!(Instant::now() < deadline, "no publish for 20 s: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `data: 0, 1, …` on every channel through `gw`'s API, round-robin, each publish
/// retried with its idempotency key until accepted (a cluster mid-move answers 503 for a
/// moment), until `stop`; returns how many each channel got.
fn publisher(gw: &Gateway, stop: Arc<AtomicBool>, tag: &'static str) -> JoinHandle<Vec<u64>> {
    let addr = gw.addr().to_string();
    tokio::spawn(async move {
        let mut sent = vec![0u64; CHANNELS];
        while !stop.load(Ordering::Relaxed) {
            for (i, n) in sent.iter_mut().enumerate() {
                let body =
                    json!({"channel": channel(i), "data": *n, "idem": format!("{tag}-{i}-{n}")});
                publish_until_accepted(&addr, body).await;
                *n += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    })
}

/// A subscriber on every channel.
async fn subscriber(gw: &Gateway, user: &str) -> Client {
    let mut c = Client::connect(gw.addr(), &tok(user)).await;
    for i in 0..CHANNELS {
        let ok = c.subscribe(&channel(i)).await;
        assert_eq!(ok["offset"], 0, "{ok}");
    }
    c
}

/// Reads until every channel delivered `sent[i]` messages, and checks each channel's
/// offsets are 1..=n and its data 0..n in order: the offset audit.
async fn audit(c: &mut Client, sent: &[u64]) {
    let total: u64 = sent.iter().sum();
    let deadline = Instant::now() + secs(60);
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut n = 0;
    while n < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = c
            .next_push(left)
            .await
            .unwrap_or_else(|| panic!("{n} of {total} messages within 60 s"));
        match p["op"].as_str() {
            Some("message") => {
                got.entry(p["channel"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(p);
                n += 1;
            }
            Some("join" | "leave") => {}
            _ => panic!("unexpected push {p}"),
        }
    }
    for (i, want) in sent.iter().enumerate() {
        let ms = got.remove(&channel(i)).unwrap_or_default();
        assert_eq!(
            offsets(&ms),
            (1..=*want).collect::<Vec<_>>(),
            "offsets on {}",
            channel(i)
        );
        let data: Vec<u64> = ms.iter().map(|m| as_u64(&m["data"])).collect();
        assert_eq!(
            data,
            (0..*want).collect::<Vec<_>>(),
            "data on {}",
            channel(i)
        );
        assert!(ms.iter().all(|m| m["epoch"] == ms[0]["epoch"]), "one epoch");
    }
    assert!(c.next_push(secs(3)).await.is_none(), "nothing more");
}

/// Where `channel`'s state lives: its primary's port and its slot.
async fn locate(cluster: &RedisCluster, channel: &str) -> (u16, u16) {
    let (server, _, slot) = cluster
        .find_key(&format!("*:m:{channel}"))
        .await
        .unwrap_or_else(|| panic!("no key of {channel} in the cluster"));
    (server.port(), slot)
}

/// Two nodes on `cluster` with no periodic position check (after a move, only the nodes'
/// resubscription and the healing it starts can deliver the moved channels' messages), a
/// subscriber to every channel on each, and a publisher through node `via`.
struct Traffic {
    nodes: [Gateway; 2],
    subs: [Client; 2],
    stop: Arc<AtomicBool>,
    publishing: JoinHandle<Vec<u64>>,
}

impl Traffic {
    async fn start(cluster: &RedisCluster, via: usize, tag: &'static str) -> Traffic {
        let quiet = [("--position-check-secs", "3600")];
        let nodes = [node(cluster, &quiet).await, node(cluster, &quiet).await];
        let subs = [
            subscriber(&nodes[0], "ann").await,
            subscriber(&nodes[1], "bob").await,
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let publishing = publisher(&nodes[via], stop.clone(), tag);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Traffic {
            nodes,
            subs,
            stop,
            publishing,
        }
    }

    /// Publishing goes on for 1.5 s more, then stops; every subscriber's audit must be
    /// clean and both nodes must have followed a partition to another primary. Returns what
    /// each channel got, and the nodes.
    async fn finish(self) -> (Vec<u64>, [Gateway; 2]) {
        let Traffic {
            nodes,
            mut subs,
            stop,
            publishing,
        } = self;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let sent = publishing.await.unwrap();
        for c in subs.iter_mut() {
            audit(c, &sent).await;
        }
        for gw in &nodes {
            assert!(
                metric(gw.addr(), "gateway_broker_moved_total").await >= Some(1.0),
                "the node followed the move"
            );
        }
        (sent, nodes)
    }
}

#[tokio::test]
async fn a_slot_move_under_publishing_loses_nothing() {
    let cluster = RedisCluster::start().await;
    let traffic = Traffic::start(&cluster, 1, "mv").await;

    // The channel closest to the start of its primary's slots: reshard moves the lowest
    // slots first, so moving that many slots to the next primary moves it.
    let mut best: Option<(usize, u16, u16, usize)> = None;
    for i in 0..CHANNELS {
        let (port, slot) = locate(&cluster, &channel(i)).await;
        let owner = cluster.servers().iter().find(|s| s.port() == port).unwrap();
        let ranges = cluster.slots_of(owner).await;
        let below: usize = ranges
            .iter()
            .map(|&(lo, hi)| {
                if slot >= lo {
                    (slot.min(hi) - lo + 1) as usize
                } else {
                    0
                }
            })
            .sum();
        if best.is_none_or(|(_, _, _, n)| below < n) {
            best = Some((i, port, slot, below));
        }
    }
    let (moved_channel, from_port, slot, count) = best.unwrap();
    let from = cluster
        .servers()
        .iter()
        .find(|s| s.port() == from_port)
        .unwrap();
    let primaries = cluster.primaries().await;
    let to = primaries.iter().find(|s| s.port() != from_port).unwrap();
    let started = Instant::now();
    cluster.reshard(count, from, to).await;
    eprintln!(
        "moved {count} slots (with {} at slot {slot}) in {:?}",
        channel(moved_channel),
        started.elapsed()
    );
    assert_eq!(cluster.primary_of(slot).await.port(), to.port());
    assert_eq!(locate(&cluster, &channel(moved_channel)).await.0, to.port());
    let (sent, nodes) = traffic.finish().await;
    assert!(sent.iter().all(|n| *n > 5), "{sent:?}");
    for gw in &nodes {
        assert_eq!(
            metric(gw.addr(), "gateway_broker_lost_total").await,
            Some(0.0)
        );
    }
}

#[tokio::test]
async fn a_coordinated_failover_under_publishing_loses_nothing() {
    let cluster = RedisCluster::start_with(3, 1).await;
    let traffic = Traffic::start(&cluster, 0, "fo").await;
    let (_, slot) = locate(&cluster, &channel(0)).await;
    let new = cluster.manual_failover(slot).await;
    assert_eq!(cluster.primary_of(slot).await.port(), new);
    traffic.finish().await;
}

/// Reads `c`'s pushes on `ch` until an `unsubscribe` with `resubscribe: true`, checking that
/// the messages before it are contiguous from offset 1; returns them.
async fn until_told_to_reload(c: &mut Client, ch: &str) -> Vec<Value> {
    let deadline = Instant::now() + secs(30);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = c
            .next_push(left)
            .await
            .unwrap_or_else(|| panic!("no reload notice on {ch} after {} messages", got.len()));
        match p["op"].as_str() {
            Some("join" | "leave") => {}
            Some("message") if p["channel"] == ch => got.push(p),
            Some("unsubscribe") if p["channel"] == ch => {
                assert_eq!(p["resubscribe"], true, "{p}");
                break;
            }
            _ => panic!("unexpected push {p}"),
        }
    }
    assert_eq!(offsets(&got), (1..=got.len() as u64).collect::<Vec<_>>());
    got
}

#[tokio::test]
async fn a_failover_that_lost_acknowledged_writes_makes_subscribers_reload() {
    let mut cluster = RedisCluster::start_with(3, 1).await;
    let quiet = [("--position-check-secs", "3600")];
    let a = node(&cluster, &quiet).await;
    let b = node(&cluster, &quiet).await;
    let ch = channel(0);
    let mut sa = Client::connect(a.addr(), &tok("ann")).await;
    sa.subscribe(&ch).await;
    let mut sb = Client::connect(b.addr(), &tok("bob")).await;
    sb.subscribe(&ch).await;
    for n in 0..5 {
        let r = api_post(a.addr(), "/api/publish", json!({"channel": ch, "data": n})).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let (_, slot) = locate(&cluster, &ch).await;
    // The replica stops before the next writes: the primary acknowledges them, the nodes
    // deliver them, and the replica never gets them.
    let primary = cluster.primary_of(slot).await;
    let replica = cluster.replica_of(primary).await;
    // The replica has the first five (it acknowledged the primary's offset); then freeze it
    // and cut its link (what is already in its socket would still reach it).
    primary.wait_replicas_synced(secs(20)).await;
    replica.pause();
    let cut = primary.command("CLIENT KILL TYPE replica").await;
    assert_eq!(cut.trim(), "1", "the replica's link");
    for n in 5..10 {
        let r = api_post(b.addr(), "/api/publish", json!({"channel": ch, "data": n})).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let before = messages(&mut sa, &ch, 10, secs(10)).await;
    let epoch = before[9]["epoch"].clone();
    messages(&mut sb, &ch, 10, secs(10)).await;
    // The primary dies; the stale replica takes over without the last five.
    cluster.kill_primary_and_promote(slot).await;
    // Publishing goes on at once: Redis reuses offsets 6.. for new messages.
    let publisher = {
        let addr = a.addr().to_string();
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 10..20 {
                let body = json!({"channel": ch, "data": n, "idem": format!("lost-{n}")});
                acks.push(publish_until_accepted(&addr, body).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acks
        })
    };
    // Every subscriber is told to reload (nobody silently skips the reused offsets).
    for c in [&mut sa, &mut sb] {
        until_told_to_reload(c, &ch).await;
        let ok = c
            .request_ok(
                "subscribe",
                json!({"channel": ch, "since": 10, "epoch": epoch}),
            )
            .await;
        assert_eq!(ok["recovered"], false, "{ok}");
        assert_ne!(ok["epoch"], epoch, "{ok}");
    }
    let acks = publisher.await.unwrap();
    // After the reload, everything acknowledged in the new epoch arrives, in order.
    let new_epoch = acks.last().unwrap()["epoch"].clone();
    assert_ne!(new_epoch, epoch);
    let r = api_post(
        a.addr(),
        "/api/publish",
        json!({"channel": ch, "data": "after"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let last = as_u64(&r.json()["offset"]);
    for c in [&mut sa, &mut sb] {
        let deadline = Instant::now() + secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = c
                .next_push(left)
                .await
                .expect("the message after the reload");
            if p["op"] == "message" && p["data"] == "after" {
                assert_eq!(as_u64(&p["offset"]), last);
                assert_eq!(p["epoch"], new_epoch);
                break;
            }
            assert!(
                p["op"] == "message" && p["epoch"] == new_epoch
                    || p["op"] == "join"
                    || p["op"] == "leave",
                "{p}"
            );
        }
    }
    for gw in [&a, &b] {
        assert!(metric(gw.addr(), "gateway_broker_lost_total").await >= Some(1.0));
    }
}
