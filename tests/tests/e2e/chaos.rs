//! The chaos audit: chat traffic across three nodes on Redis with PostgreSQL archiving while,
//! on a schedule, a node is SIGKILLed and restarted, Redis is frozen (SIGSTOP) and later
//! killed and restarted, PostgreSQL is cut off, and one node is cut off from Redis. Clients
//! reconnect with backoff and recover by offset, as the web demo's client does; publishers
//! retry with the same idempotency key until acknowledged. At the end every acknowledged
//! message is audited: received by every subscriber exactly once and in order, and in the
//! archive exactly once.
//!
//! `CHAOS_SECS` stretches the schedule (default 1: about 40 s of chaos; 5 runs about 3
//! minutes). The figures are printed as one `chaos audit:` line.

use e2e::{Gateway, PgDatabase, RedisServer, TcpProxy, Token, secs};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
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

fn token(user: &str) -> String {
    // A channel outside any namespace: granted by the token, no presence traffic.
    Token::new(user).channels(&["chaos:*"]).exp_in(3600).hs256()
}

/// The live nodes' addresses (a killed node's slot is empty until it is back).
type Addrs = Arc<Mutex<Vec<Option<String>>>>;

fn pick(addrs: &Addrs, attempt: usize) -> Option<String> {
    let addrs = addrs.lock().unwrap();
    let live: Vec<&String> = addrs.iter().flatten().collect();
    if live.is_empty() {
        None
    } else {
        Some(live[attempt % live.len()].clone())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addrs: &Addrs, user: &str, attempt: usize) -> Option<Ws> {
    let addr = pick(addrs, attempt)?;
    let url = format!("ws://{addr}/ws?token={}", token(user));
    let (mut ws, _) = tokio::time::timeout(secs(3), tokio_tungstenite::connect_async(url))
        .await
        .ok()?
        .ok()?;
    // The welcome push.
    match tokio::time::timeout(secs(3), ws.next()).await {
        Ok(Some(Ok(Message::Text(_)))) => Some(ws),
        _ => None,
    }
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((100u64 << attempt.min(4)).min(1500))
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// Offsets received, in arrival order (after the first subscribe).
    offsets: Vec<u64>,
    /// The offset the first subscribe started at.
    start: Option<u64>,
    epochs: HashSet<String>,
    reconnects: usize,
    /// Subscribes answered `recovered: false` after a reconnect.
    not_recovered: usize,
}

/// A subscriber that stays subscribed through everything: on any failure it reconnects (to
/// any live node, with backoff) and subscribes again with `since`/`epoch`.
async fn subscriber(index: usize, addrs: Addrs, stop: watch::Receiver<u64>) -> Seen {
    let name = format!("sub{index}");
    let mut seen = Seen::default();
    let mut last: Option<(String, u64)> = None;
    // Spread over the nodes: each client starts on another one.
    let mut attempt = index;
    loop {
        if *stop.borrow() > 0 && last.as_ref().is_some_and(|(_, o)| *o >= *stop.borrow()) {
            return seen;
        }
        let Some(mut ws) = connect(&addrs, &name, attempt).await else {
            attempt += 1;
            tokio::time::sleep(backoff(attempt - index)).await;
            continue;
        };
        attempt = index;
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
                Err(_) => {
                    if *stop.borrow() > 0
                        && last.as_ref().is_some_and(|(_, o)| *o >= *stop.borrow())
                    {
                        return seen;
                    }
                    continue;
                }
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
                    seen.offsets.push(offset);
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

/// What one publisher got acknowledged: (offset, epoch) per message index.
type Acks = Vec<(u64, String)>;

/// Publishes `RATE` messages a second until `stop`, each with its own idempotency key,
/// retrying (reconnecting as needed) until acknowledged.
async fn publisher(index: usize, addrs: Addrs, stop: watch::Receiver<u64>) -> Acks {
    let name = format!("pub{index}");
    let mut acks = Vec::new();
    let mut ws: Option<Ws> = None;
    let mut attempt = index;
    let mut id = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut n = 0u64;
    while *stop.borrow() == 0 {
        tick.tick().await;
        let idem = format!("{name}-{n}");
        loop {
            if ws.is_none() {
                ws = connect(&addrs, &name, attempt).await;
                if ws.is_none() {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt - index)).await;
                    continue;
                }
                attempt = index;
            }
            let conn = ws.as_mut().expect("connected");
            id += 1;
            let command = json!({"id": id, "op": "publish", "channel": CHANNEL,
                "data": {"from": name, "n": n}, "idem": idem});
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
                    acks.push((offset, epoch));
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

#[tokio::test]
async fn chaos_audit_loses_nothing_accepted() {
    let stretch: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let at = |s: u64| Duration::from_secs(s * stretch);
    let mut redis = RedisServer::start_durable().await;
    let db = PgDatabase::create().await;
    let pg = TcpProxy::start(db.host_port()).await;
    let pg_url = db.url_via(pg.addr());
    // Node 2 reaches Redis through a proxy, to be partitioned.
    let redis_port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let redis_proxy = TcpProxy::start(&format!("127.0.0.1:{redis_port}")).await;
    let url_of = |i: usize| {
        if i == 2 {
            format!("redis://{}", redis_proxy.addr())
        } else {
            redis.url()
        }
    };
    let mut nodes: Vec<Option<Gateway>> = Vec::new();
    for i in 0..NODES {
        nodes.push(Some(start_node(&url_of(i), &pg_url, i).await));
    }
    let addrs: Addrs = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|n| n.as_ref().map(|g| g.addr().to_string()))
            .collect(),
    ));
    let (stop_tx, stop_rx) = watch::channel(0u64);
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| tokio::spawn(subscriber(i, addrs.clone(), stop_rx.clone())))
        .collect();
    tokio::time::sleep(secs(2)).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publisher(i, addrs.clone(), stop_rx.clone())))
        .collect();
    let started = Instant::now();
    let until = |d: Duration| tokio::time::sleep_until(started + d);

    until(at(3)).await;
    eprintln!("chaos: SIGKILL node 1");
    addrs.lock().unwrap()[1] = None;
    if let Some(mut n) = nodes[1].take() {
        n.send_signal("KILL");
        n.wait_exit(secs(10)).await;
    }
    until(at(5)).await;
    eprintln!("chaos: node 1 back");
    let node = start_node(&url_of(1), &pg_url, 1).await;
    addrs.lock().unwrap()[1] = Some(node.addr().to_string());
    nodes[1] = Some(node);

    until(at(8)).await;
    eprintln!("chaos: Redis frozen (SIGSTOP)");
    redis.pause();
    until(at(13)).await;
    redis.resume();
    eprintln!("chaos: Redis thawed");

    until(at(17)).await;
    eprintln!("chaos: Redis SIGKILLed and restarted (append-only file kept)");
    redis.kill_and_restart().await;

    until(at(21)).await;
    eprintln!("chaos: PostgreSQL cut off");
    pg.cut();
    until(at(26)).await;
    pg.restore();
    eprintln!("chaos: PostgreSQL back");

    until(at(29)).await;
    eprintln!("chaos: node 2 cut off from Redis");
    redis_proxy.cut();
    until(at(34)).await;
    redis_proxy.restore();
    eprintln!("chaos: node 2 back on Redis");

    until(at(37)).await;
    // Stop publishing; subscribers stop once they saw the last acknowledged offset.
    stop_tx.send_replace(u64::MAX);
    let mut acks: Vec<(u64, String)> = Vec::new();
    for p in publishers {
        acks.extend(p.await.expect("publisher"));
    }
    let top = acks.iter().map(|(o, _)| *o).max().unwrap_or(0);
    stop_tx.send_replace(top);
    let mut seen = Vec::new();
    for s in subscribers {
        let s = tokio::time::timeout(secs(60), s)
            .await
            .expect("every subscriber catches up within a minute")
            .expect("subscriber");
        seen.push(s);
    }

    // The audit.
    let epochs: HashSet<&String> = acks.iter().map(|(_, e)| e).collect();
    let acked: Vec<u64> = {
        let mut v: Vec<u64> = acks.iter().map(|(o, _)| *o).collect();
        v.sort_unstable();
        v
    };
    let distinct: HashSet<u64> = acked.iter().copied().collect();
    let (mut lost, mut duplicated, mut reordered, mut delivered) = (0usize, 0usize, 0usize, 0usize);
    let mut reconnects = 0;
    let mut not_recovered = 0;
    for s in &seen {
        let start = s.start.unwrap_or(0);
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut high = 0;
        for &o in &s.offsets {
            *counts.entry(o).or_default() += 1;
            if o < high {
                reordered += 1;
            }
            high = high.max(o);
        }
        delivered += s.offsets.len();
        duplicated += counts
            .values()
            .filter(|&&n| n > 1)
            .map(|n| n - 1)
            .sum::<usize>();
        lost += acked
            .iter()
            .filter(|o| **o > start && !counts.contains_key(o))
            .count();
        reconnects += s.reconnects;
        not_recovered += s.not_recovered;
    }
    // Everything reaches the archive, once.
    let deadline = Instant::now() + secs(60);
    let archived = loop {
        let n = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM gw_messages WHERE channel = '{CHANNEL}'"
            ))
            .await;
        if n as usize >= distinct.len() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let archived_distinct = db
        .scalar(&format!(
            "SELECT COUNT(DISTINCT seq) FROM gw_messages WHERE channel = '{CHANNEL}'"
        ))
        .await;
    eprintln!(
        "chaos audit: acked {} (distinct offsets {}, epochs {}), delivered {delivered} to \
         {SUBSCRIBERS} subscribers, lost {lost}, duplicated {duplicated}, reordered \
         {reordered}, archived {archived} ({archived_distinct} distinct); reconnects \
         {reconnects}, recovered:false {not_recovered}",
        acked.len(),
        distinct.len(),
        epochs.len()
    );
    assert_eq!(epochs.len(), 1, "one epoch throughout: {epochs:?}");
    assert_eq!(
        distinct.len(),
        acked.len(),
        "every acknowledged publish has its own offset"
    );
    assert_eq!(
        distinct.len() as u64,
        top,
        "acknowledged offsets are contiguous from 1"
    );
    assert_eq!((lost, duplicated, reordered), (0, 0, 0));
    assert_eq!(not_recovered, 0, "every reconnect recovered");
    assert!(
        reconnects >= 2,
        "the node kill moved subscribers: {reconnects} reconnects"
    );
    assert_eq!(archived as usize, distinct.len());
    assert_eq!(archived_distinct as usize, distinct.len());
    drop(nodes);
}
