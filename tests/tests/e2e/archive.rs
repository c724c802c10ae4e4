//! The message archive: history, offsets and epochs outlive a restart (of the embedded node,
//! or of Redis), `history` pages back past recent history, recovery falls back on the archive,
//! and a database outage or a dead archiver delays archiving without losing or doubling
//! anything.

use e2e::{
    ArchivedRow, Client, Gateway, GatewayBuilder, PgDatabase, RedisServer, TcpProxy, TempDir,
    api_get, as_u64, assert_startup_error, error_code, eventually, metric, secs, token,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

fn offsets(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages in {page}"))
        .iter()
        .map(|m| as_u64(&m["offset"]))
        .collect()
}

/// Waits until the node reports nothing waiting for the archive.
async fn archived(gw: &Gateway) {
    let deadline = Instant::now() + secs(30);
    loop {
        if metric(gw.addr(), "gateway_archive_pending").await == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "the archive never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose clients may publish as fast as a test needs (no token bucket in the way).
fn unthrottled(builder: GatewayBuilder) -> GatewayBuilder {
    builder
        .arg("--publish-rate", 100000)
        .arg("--publish-burst", 100000)
}

/// An embedded node archiving to `database_url`.
fn embedded_on(database_url: &str) -> GatewayBuilder {
    unthrottled(
        Gateway::builder()
            .embedded()
            .arg("--database-url", database_url),
    )
}

/// A clustered node on `redis` archiving to `database_url`.
fn clustered_on(redis: &RedisServer, database_url: &str) -> GatewayBuilder {
    unthrottled(
        Gateway::builder()
            .arg("--redis-url", redis.url())
            .arg("--database-url", database_url),
    )
}

fn embedded(data: &TempDir) -> GatewayBuilder {
    Gateway::builder()
        .embedded()
        .arg("--data-dir", data.path().display())
}

#[tokio::test]
async fn an_embedded_node_keeps_history_offsets_and_epochs_across_a_restart() {
    let data = TempDir::new("archive");
    let mut gw = embedded(&data).start().await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let mut epoch = Value::Null;
    for i in 1..=5u64 {
        let ack = c
            .request_ok("publish", json!({"channel": "room:keep", "data": i}))
            .await;
        assert_eq!(as_u64(&ack["offset"]), i);
        epoch = ack["epoch"].clone();
    }
    drop(c);
    // SIGTERM drains: whatever is still queued for the archive is written before the exit.
    gw.send_signal("TERM");
    assert!(gw.wait_exit(secs(20)).await.is_some_and(|s| s.success()));
    let gw = embedded(&data).start().await;
    let mut c = Client::connect(gw.addr(), &token("bob")).await;
    let h = c
        .request_ok("history", json!({"channel": "room:keep"}))
        .await;
    assert_eq!(offsets(&h), [1, 2, 3, 4, 5], "{h}");
    assert_eq!(h["epoch"], epoch);
    assert_eq!(h["messages"][4]["data"], 5);
    // A client that saw offset 2 before the restart recovers the rest, in the same epoch.
    let ok = c
        .request_ok(
            "subscribe",
            json!({"channel": "room:keep", "since": 2, "epoch": epoch}),
        )
        .await;
    assert_eq!(
        (ok["recovered"].clone(), ok["offset"].clone()),
        (json!(true), json!(5))
    );
    for expected in 3..=5u64 {
        let m = c.expect_message("room:keep", secs(5)).await;
        assert_eq!(as_u64(&m["offset"]), expected);
    }
    // Offsets continue.
    let ack = c
        .request_ok("publish", json!({"channel": "room:keep", "data": 6}))
        .await;
    assert_eq!((as_u64(&ack["offset"]), &ack["epoch"]), (6, &epoch));
}

#[tokio::test]
async fn history_pages_back_from_memory_into_the_archive() {
    let data = TempDir::new("archive");
    let gw = embedded(&data).arg("--history-size", 5).start().await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for i in 1..=20u64 {
        c.publish("room:pages", json!(i)).await;
    }
    archived(&gw).await;
    let page = |fields: Value| {
        let mut f = json!({"channel": "room:pages", "limit": 5});
        f.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        f
    };
    // The newest five are in memory; `before` walks back into the archive, contiguously.
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        let fields = match before {
            None => json!({}),
            Some(b) => json!({ "before": b }),
        };
        let h = c.request_ok("history", page(fields)).await;
        let got = offsets(&h);
        if got.is_empty() {
            break;
        }
        before = got.first().copied();
        seen.splice(0..0, got);
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    // Forward from the start: archive and memory joined in one page.
    let h = c
        .request_ok(
            "history",
            json!({"channel": "room:pages", "since": 0, "limit": 100}),
        )
        .await;
    assert_eq!(offsets(&h), (1..=20).collect::<Vec<_>>());
    // The HTTP API pages the same way.
    let r = api_get(gw.addr(), "/api/history/room:pages?before=8&limit=3").await;
    assert_eq!(offsets(&r.json()), [5, 6, 7], "{}", r.body);
}

#[tokio::test]
async fn recovery_older_than_recent_history_comes_from_the_archive() {
    let data = TempDir::new("archive");
    let gw = embedded(&data)
        .arg("--history-size", 5)
        .arg("--history-ttl-secs", 2)
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let mut epoch = Value::Null;
    for i in 1..=20u64 {
        let ack = c
            .request_ok("publish", json!({"channel": "room:rec", "data": i}))
            .await;
        epoch = ack["epoch"].clone();
    }
    archived(&gw).await;
    // Memory holds 16..=20; the client saw up to 3.
    let mut r = Client::connect(gw.addr(), &token("bob")).await;
    let ok = r
        .request_ok(
            "subscribe",
            json!({"channel": "room:rec", "since": 3, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    for expected in 4..=20u64 {
        assert_eq!(
            as_u64(&r.expect_message("room:rec", secs(5)).await["offset"]),
            expected
        );
    }
    // Past the history TTL memory holds nothing: the archive still recovers all of it.
    tokio::time::sleep(secs(3)).await;
    let mut late = Client::connect(gw.addr(), &token("carol")).await;
    let ok = late
        .request_ok(
            "subscribe",
            json!({"channel": "room:rec", "since": 18, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(
        as_u64(&late.expect_message("room:rec", secs(5)).await["offset"]),
        19
    );
    assert_eq!(
        as_u64(&late.expect_message("room:rec", secs(5)).await["offset"]),
        20
    );
    // Another epoch is still another epoch.
    let mut other = Client::connect(gw.addr(), &token("dave")).await;
    let ok = other
        .request_ok(
            "subscribe",
            json!({"channel": "room:rec", "since": 3, "epoch": "not-the-epoch"}),
        )
        .await;
    assert_eq!(ok["recovered"], false, "{ok}");
}

#[tokio::test]
async fn a_postgres_outage_delays_archiving_and_loses_nothing() {
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let config = TempDir::new("archive-config");
    let path = config.join("gateway.toml");
    std::fs::write(
        &path,
        "[[namespaces]]\nprefix = \"typing:\"\nopen = true\nclient_publish = true\narchive = false\n",
    )
    .expect("config file");
    let gw = embedded_on(&db.url_via(proxy.addr()))
        .arg("--config", path.display())
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.publish("room:pg", json!(0)).await;
    c.publish("typing:pg", json!("not archived")).await;
    archived(&gw).await;
    proxy.cut();
    // Publishing goes on while the database is away: every publish is acknowledged.
    let outage = publish_timed(&mut c, "room:pg", 10_000, 2).await;
    assert!(
        metric(gw.addr(), "gateway_archive_pending")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    // Failures are counted while the database is away.
    let deadline = Instant::now() + secs(10);
    while metric(gw.addr(), "gateway_archive_failures_total")
        .await
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(Instant::now() < deadline, "no archive failure counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    archived(&gw).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM gw_messages").await, 10_001);
    assert_eq!(
        db.scalar("SELECT COUNT(DISTINCT seq) FROM gw_messages WHERE channel = 'room:pg'")
            .await,
        10_001
    );
    assert_eq!(
        db.scalar("SELECT MAX(seq) FROM gw_messages WHERE channel = 'room:pg'")
            .await,
        10_001
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM gw_messages WHERE channel = 'typing:pg'")
            .await,
        0,
        "an opted-out namespace is never stored"
    );
    // The same load on a node without an archive, for comparison (reported, not asserted:
    // this machine is shared and noisy).
    let plain = embedded_on("off").start().await;
    let mut c = Client::connect(plain.addr(), &token("alice")).await;
    let off = publish_timed(&mut c, "room:pg", 10_000, 1).await;
    eprintln!(
        "publish ack latency, 10,000 publishes in windows of 100 (the gateway under test: GATEWAY_BIN or the debug build): PostgreSQL \
         down p50 {:.2} ms p99 {:.2} ms; archive off p50 {:.2} ms p99 {:.2} ms",
        outage.0, outage.1, off.0, off.1
    );
}

/// Publishes `n` messages (offsets from `first`), 100 in flight at a time, checking each ack;
/// returns the ack latency's p50 and p99 in milliseconds.
async fn publish_timed(c: &mut Client, channel: &str, n: u64, first: u64) -> (f64, f64) {
    let mut latencies = Vec::with_capacity(n as usize);
    let mut next = first;
    while next < first + n {
        let window: Vec<(i64, Instant)> = {
            let mut sent = Vec::new();
            for i in next..(next + 100).min(first + n) {
                let id = c
                    .send("publish", json!({"channel": channel, "data": i}))
                    .await;
                sent.push((id, Instant::now()));
            }
            sent
        };
        for (id, at) in window {
            let reply = c.wait_reply(id, secs(10)).await;
            latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(as_u64(&reply["ok"]["offset"]), next, "{reply}");
            next += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.5), at(0.99))
}

#[tokio::test]
async fn a_full_archive_queue_makes_publish_unavailable_and_loses_nothing() {
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let gw = embedded_on(&db.url_via(proxy.addr()))
        .arg("--archive-queue", 20)
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.publish("room:full", json!(0)).await;
    archived(&gw).await;
    proxy.cut();
    let (mut acked, mut refused) = (1i64, 0);
    while refused < 3 {
        let r = c
            .request("publish", json!({"channel": "room:full", "data": acked}))
            .await;
        match error_code(&r) {
            None => {
                acked += 1;
                assert!(acked < 2000, "the queue never filled");
            }
            Some("unavailable") => refused += 1,
            Some(other) => panic!("{other}: {r}"),
        }
    }
    proxy.restore();
    archived(&gw).await;
    // Every acknowledged message is there, once, with contiguous offsets.
    assert_eq!(db.scalar("SELECT COUNT(*) FROM gw_messages").await, acked);
    assert_eq!(db.scalar("SELECT MAX(seq) FROM gw_messages").await, acked);
    // And publishing works again.
    c.publish("room:full", json!("after")).await;
}

// Clustered mode: the archive stream in Redis, consumed by every node into PostgreSQL.

async fn clustered(redis: &RedisServer, database_url: &str) -> Gateway {
    clustered_on(redis, database_url).start().await
}

/// The archive streams in `redis` (one per partition), as `KEYS` finds them.
async fn archive_streams(redis: &RedisServer) -> Vec<String> {
    let reply = redis.command("KEYS gw:*:archive").await;
    reply
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Entries in every archive stream.
async fn stream_len(redis: &RedisServer) -> u64 {
    let mut total = 0;
    for key in archive_streams(redis).await {
        let len = redis.command(&format!("XLEN {key}")).await;
        total += len.trim().parse::<u64>().unwrap_or(0);
    }
    total
}

async fn stream_archived(redis: &RedisServer) {
    let deadline = Instant::now() + secs(60);
    loop {
        let len = stream_len(redis).await;
        if len == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive streams still hold {len} entries"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn clustered_nodes_archive_every_message_once_through_a_postgres_outage() {
    let redis = RedisServer::start().await;
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let url = db.url_via(proxy.addr());
    let (a, b) = (clustered(&redis, &url).await, clustered(&redis, &url).await);
    let mut ca = Client::connect(a.addr(), &token("alice")).await;
    let mut cb = Client::connect(b.addr(), &token("bob")).await;
    proxy.cut();
    for i in 0..500u64 {
        ca.publish("room:pga", json!(i)).await;
        cb.publish("room:pgb", json!(i)).await;
    }
    assert!(
        metric(a.addr(), "gateway_archive_pending")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    proxy.restore();
    stream_archived(&redis).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM gw_messages").await, 1000);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM (SELECT DISTINCT channel, seq FROM gw_messages) d")
            .await,
        1000
    );
    // Either node reads the archive where Redis history ends.
    let h = cb
        .request_ok(
            "history",
            json!({"channel": "room:pga", "since": 0, "limit": 1000}),
        )
        .await;
    assert_eq!(offsets(&h), (1..=500).collect::<Vec<_>>());
}

/// Entries of the archive streams pending with `consumer` (XPENDING's summary lists each
/// consumer's name, then its count).
async fn pending_with(redis: &RedisServer, consumer: &str) -> u64 {
    let mut total = 0;
    for key in archive_streams(redis).await {
        let reply = redis.command(&format!("XPENDING {key} archivers")).await;
        let lines: Vec<&str> = reply.lines().collect();
        if let Some(i) = lines.iter().position(|l| *l == consumer) {
            total += lines
                .get(i + 1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("a count after {consumer} in {reply:?}"));
        }
    }
    total
}

#[tokio::test]
async fn a_killed_archiver_leaves_its_entries_to_another_node() {
    let redis = RedisServer::start().await;
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let url = db.url_via(proxy.addr());
    let mut a = clustered(&redis, &url).await;
    let b = clustered(&redis, &url).await;
    let node_a = Client::connect(a.addr(), &token("probe")).await.welcome["node"]
        .as_str()
        .expect("a node id in the welcome")
        .to_owned();
    let mut c = Client::connect(b.addr(), &token("alice")).await;
    proxy.cut();
    for i in 0..600u64 {
        c.publish("room:claim", json!({"n": i})).await;
    }
    // Node a's archiver holds entries it cannot write (its sweep reads what b published).
    eventually("node a's archiver takes entries", secs(20), async || {
        pending_with(&redis, &node_a).await > 0
    })
    .await;
    // It dies with its share.
    a.send_signal("KILL");
    assert!(a.wait_exit(secs(10)).await.is_some(), "node a did not die");
    assert!(pending_with(&redis, &node_a).await > 0);
    proxy.restore();
    // The survivor claims what the dead node held once it has been idle long enough, and
    // every message is stored once.
    stream_archived(&redis).await;
    assert_eq!(
        pending_with(&redis, &node_a).await,
        0,
        "node a's entries were claimed"
    );
    assert_archived_exactly(&db.messages().await, "room:claim", 599);
}

#[tokio::test]
async fn offsets_continue_when_redis_comes_back_empty() {
    let mut redis = RedisServer::start().await;
    let db = PgDatabase::create().await;
    let gw = clustered(&redis, &db.url()).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let mut epoch = Value::Null;
    for i in 1..=10u64 {
        let ack = c
            .request_ok("publish", json!({"channel": "room:cont", "data": i}))
            .await;
        epoch = ack["epoch"].clone();
    }
    stream_archived(&redis).await;
    redis.restart_empty().await;
    // Once the node is back on Redis, the channel resumes its archived position.
    let deadline = Instant::now() + secs(20);
    let ack = loop {
        let r = c
            .request("publish", json!({"channel": "room:cont", "data": 11}))
            .await;
        match error_code(&r) {
            None => break r["ok"].clone(),
            Some("unavailable") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{other:?}: {r}"),
        }
    };
    assert_eq!((as_u64(&ack["offset"]), &ack["epoch"]), (11, &epoch));
    let h = c
        .request_ok(
            "history",
            json!({"channel": "room:cont", "since": 0, "limit": 100}),
        )
        .await;
    assert_eq!(offsets(&h), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn with_appendfsync_always_a_redis_sigkill_loses_nothing_accepted() {
    let mut redis = RedisServer::start_durable().await;
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let gw = clustered(&redis, &db.url_via(proxy.addr())).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    proxy.cut();
    for i in 1..=300u64 {
        c.publish("room:aof", json!(i)).await;
    }
    // Every acknowledged publish is in the append-only file: a SIGKILL loses none.
    redis.kill_and_restart().await;
    proxy.restore();
    stream_archived(&redis).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM gw_messages").await, 300);
    assert_eq!(db.scalar("SELECT MAX(seq) FROM gw_messages").await, 300);
}

#[tokio::test]
async fn two_embedded_nodes_cannot_share_one_archive() {
    let data = TempDir::new("archive");
    let _first = embedded(&data).start().await;
    let (status, output) = embedded(&data).run_to_exit(secs(20)).await;
    assert_startup_error(&status, &output, &["its own --data-dir"]);
}

// Recovery while the archive is behind: what is accepted and not yet stored is still found.

/// A reader that saw offset 1 of `channel` misses `n` messages published back to back, then
/// resubscribes at once: it must be told `recovered: true` and get every message once, in
/// order, with its payload (and nothing more within 3 s, where a duplicate would show). With
/// `hole`, the database behind that proxy is a black hole from before the burst until after
/// the recovery; the node must still be waiting on it then (the fault took effect).
async fn miss_then_recover(gw: &Gateway, channel: &str, n: u64, hole: Option<&TcpProxy>) {
    let mut w = Client::connect(gw.addr(), &token("writer")).await;
    let first = w
        .request_ok("publish", json!({"channel": channel, "data": {"n": 0}}))
        .await;
    assert_eq!(as_u64(&first["offset"]), 1, "{first}");
    let epoch = first["epoch"].clone();
    if let Some(proxy) = hole {
        archived(gw).await;
        proxy.black_hole();
    }
    for i in 1..=n {
        assert_eq!(w.publish(channel, json!({"n": i})).await, i + 1);
    }
    let mut r = Client::connect(gw.addr(), &token("reader")).await;
    let ok = r
        .request_ok(
            "subscribe",
            json!({"channel": channel, "since": 1, "epoch": epoch}),
        )
        .await;
    assert_eq!(
        (&ok["recovered"], as_u64(&ok["offset"]), &ok["epoch"]),
        (&json!(true), n + 1, &epoch),
        "nothing was lost: {ok}"
    );
    for i in 1..=n {
        let m = r.expect_message(channel, secs(10)).await;
        assert_eq!(
            (as_u64(&m["offset"]), &m["data"], &m["epoch"]),
            (i + 1, &json!({"n": i}), &epoch),
            "{m}"
        );
    }
    let late = r.next_push_of("message", secs(3)).await;
    assert!(late.is_none(), "a message after the recovery: {late:?}");
    if hole.is_some() {
        let pending = metric(gw.addr(), "gateway_archive_pending").await;
        assert!(
            pending.unwrap_or(0.0) > 0.0,
            "the database was reachable after all (pending {pending:?})"
        );
    }
}

#[tokio::test]
async fn a_burst_past_recent_history_is_recovered_at_once_from_an_embedded_node() {
    let data = TempDir::new("archive");
    let gw = unthrottled(embedded(&data))
        .arg("--history-size", 10)
        .start()
        .await;
    miss_then_recover(&gw, "room:burst", 40, None).await;
}

#[tokio::test]
async fn a_burst_past_recent_history_is_recovered_at_once_from_clustered_nodes() {
    let redis = RedisServer::start().await;
    let db = PgDatabase::create().await;
    let gw = clustered_on(&redis, &db.url())
        .arg("--history-size", 10)
        .start()
        .await;
    miss_then_recover(&gw, "room:burst", 40, None).await;
}

/// Every message `channel` acknowledged (offsets 1..=n+1, payloads `{"n": offset - 1}` in
/// `epoch`) is archived exactly once, and nothing else.
fn assert_archived_exactly(rows: &[ArchivedRow], channel: &str, n: u64) {
    let epoch = rows.first().map(|r| r.1.clone()).unwrap_or_default();
    let want: Vec<ArchivedRow> = (0..=n)
        .map(|i| (channel.to_string(), epoch.clone(), i + 1, json!({"n": i})))
        .collect();
    assert_eq!(rows.len(), want.len(), "rows stored");
    assert_eq!(rows, want, "every acknowledged message once, nothing else");
}

/// 500 messages recovered past recent history while PostgreSQL is a black hole, on the node
/// that `node` builds for a database URL; then, the database back, archived exactly once.
async fn recovery_through_a_black_hole(node: impl FnOnce(&str) -> GatewayBuilder) {
    let db = PgDatabase::create().await;
    let proxy = TcpProxy::start(db.host_port()).await;
    let gw = node(&db.url_via(proxy.addr()))
        .arg("--history-size", 10)
        .start()
        .await;
    miss_then_recover(&gw, "room:hole", 500, Some(&proxy)).await;
    proxy.restore();
    archived(&gw).await;
    assert_archived_exactly(&db.messages().await, "room:hole", 500);
}

#[tokio::test]
async fn an_embedded_node_recovers_past_recent_history_while_postgres_is_a_black_hole() {
    recovery_through_a_black_hole(embedded_on).await;
}

#[tokio::test]
async fn clustered_nodes_recover_past_recent_history_while_postgres_is_a_black_hole() {
    let redis = RedisServer::start().await;
    recovery_through_a_black_hole(|url| clustered_on(&redis, url)).await;
}
