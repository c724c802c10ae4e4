//! Parts of the contract that take time or set-up to see: the dedup window and the history
//! TTL running out, a re-subscribe under live traffic, the API's error statuses, JWT leeway,
//! every metric series the reference lists, and the drain deadline.

use e2e::{
    API_AUTH, Client, Connect, Gateway, Token, api_get, api_post, as_u64, assert_api_error, http,
    secs, token,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn an_idempotency_key_is_forgotten_after_the_dedup_window() {
    let gw = Gateway::start(&["--dedup-window-secs", "60"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let publish = json!({"channel": "room:dedup", "data": 1, "idem": "k1"});
    let first = c.request_ok("publish", publish.clone()).await;
    assert_eq!(c.request_ok("publish", publish.clone()).await, first);
    drop(c);
    tokio::time::sleep(secs(62)).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let later = c.request_ok("publish", publish).await;
    assert_eq!(
        as_u64(&later["offset"]),
        as_u64(&first["offset"]) + 1,
        "after the window the same key is a new message: {first} {later}"
    );
}

#[tokio::test]
async fn recovery_past_the_history_ttl_says_recovered_false() {
    // Without an archive (with one, the archive recovers it: see archive.rs).
    let gw = Gateway::start(&["--history-ttl-secs", "2", "--database-url", "off"]).await;
    // A namespace without presence: the only pushes are messages.
    let quiet = |user: &str| Token::new(user).channels(&["ttl:*"]).hs256();
    let mut c = Client::connect(gw.addr(), &quiet("alice")).await;
    c.publish("ttl:x", json!(1)).await;
    let ack = c
        .request_ok("publish", json!({"channel": "ttl:x", "data": 2}))
        .await;
    let epoch = ack["epoch"].clone();
    // Within the TTL the message is recovered.
    let mut early = Client::connect(gw.addr(), &quiet("bob")).await;
    let ok = early
        .request_ok(
            "subscribe",
            json!({"channel": "ttl:x", "since": 1, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(early.expect_message("ttl:x", secs(5)).await["offset"], 2);
    tokio::time::sleep(secs(4)).await;
    let mut late = Client::connect(gw.addr(), &quiet("carol")).await;
    let ok = late
        .request_ok(
            "subscribe",
            json!({"channel": "ttl:x", "since": 1, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], false, "the message expired: {ok}");
    let h = late
        .request_ok("history", json!({"channel": "ttl:x"}))
        .await;
    assert_eq!(h["messages"], json!([]), "{h}");
    let none = late.next_push(secs(3)).await;
    assert!(none.is_none(), "nothing replayed: {none:?}");
}

#[tokio::test]
async fn a_resubscribe_under_live_traffic_resyncs_without_gaps() {
    let gw = Gateway::builder()
        .arg("--publish-rate", 100000)
        .arg("--publish-burst", 100000)
        .start()
        .await;
    let mut reader = Client::connect(gw.addr(), &token("reader")).await;
    let ok = reader.subscribe("room:live").await;
    let epoch = ok["epoch"].clone();
    let addr = gw.addr().to_string();
    let writer = tokio::spawn(async move {
        let mut w = Client::connect(&addr, &token("writer")).await;
        for i in 1..=300u64 {
            assert_eq!(w.publish("room:live", json!(i)).await, i);
        }
    });
    // Mid-stream, re-subscribe from offset 50 (as a client does after a suspected gap).
    let mut seen: Vec<u64> = Vec::new();
    while seen.last().copied().unwrap_or(0) < 100 {
        let m = reader.expect_message("room:live", secs(10)).await;
        seen.push(as_u64(&m["offset"]));
    }
    let id = reader
        .send(
            "subscribe",
            json!({"channel": "room:live", "since": 50, "epoch": epoch}),
        )
        .await;
    // Frames are read in order: when a push comes back with the reply already read, the
    // reply came before it.
    let mut after_reply: Option<usize> = None;
    while seen.iter().max().copied().unwrap_or(0) < 300 || after_reply.is_none() {
        let m = reader
            .next_push(secs(10))
            .await
            .expect("messages keep coming");
        assert_eq!(m["op"], "message", "{m}");
        if after_reply.is_none()
            && let Some(reply) = reader.take_reply(id)
        {
            assert_eq!(reply["ok"]["recovered"], true, "{reply}");
            after_reply = Some(seen.len());
        }
        seen.push(as_u64(&m["offset"]));
    }
    writer.await.expect("writer");
    // Before the reply: the live stream, in order, no gap.
    let at = after_reply.expect("the re-subscribe was answered");
    let (live, replay) = seen.split_at(at);
    assert!(live.windows(2).all(|w| w[1] == w[0] + 1), "{live:?}");
    // After it: offset 51 onwards again (the replay), then live messages, never a gap; a
    // client that drops repeats by offset sees 1..=300 exactly once, in order.
    assert_eq!(replay.first(), Some(&51), "{replay:?}");
    let mut top = 0;
    let mut kept = Vec::new();
    for &o in &seen {
        if o > top {
            assert_eq!(o, top + 1, "gap before {o}: {seen:?}");
            top = o;
            kept.push(o);
        }
    }
    assert_eq!(kept, (1..=300).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_api_answers_each_error_with_its_status() {
    let gw = Gateway::start(&["--dedup-max-keys", "1"]).await;
    // 404: no such endpoint, and the dev endpoint outside dev mode.
    let r = api_get(gw.addr(), "/api/nope").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = http(
        gw.addr(),
        "POST",
        "/dev/token",
        &[],
        Some(r#"{"user":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    // 400: bad JSON, bad channel, bad query.
    let r = http(
        gw.addr(),
        "POST",
        "/api/publish",
        &[API_AUTH],
        Some("{nope"),
    )
    .await;
    assert_api_error(&r, 400, "bad_request");
    let r = api_get(gw.addr(), "/api/history/room:x?limit=5000").await;
    assert_api_error(&r, 400, "bad_request");
    let r = api_get(gw.addr(), "/api/history/room:x?since=-1").await;
    assert_api_error(&r, 400, "bad_request");
    let r = api_get(gw.addr(), "/api/presence/bad%20name").await;
    assert_api_error(&r, 400, "bad_request");
    // 413: a body over --max-frame-size.
    let big = format!(r#"{{"channel":"room:x","data":"{}"}}"#, "y".repeat(66_000));
    let r = http(gw.addr(), "POST", "/api/publish", &[API_AUTH], Some(&big)).await;
    assert_api_error(&r, 413, "too_large");
    let r = api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "room:x", "data": 1, "idem": "k".repeat(129)}),
    )
    .await;
    assert_api_error(&r, 413, "too_large");
    // 503: the channel's dedup table is full (one key); nothing is lost, retry later.
    let publish = |idem: &str| json!({"channel": "room:full", "data": idem, "idem": idem});
    let r = api_post(gw.addr(), "/api/publish", publish("a")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = api_post(gw.addr(), "/api/publish", publish("b")).await;
    assert_api_error(&r, 503, "unavailable");
    // The API has no ACL and no rate limit (backends are trusted): a burst all passes.
    for i in 0..50 {
        let r = api_post(
            gw.addr(),
            "/api/publish",
            json!({"channel": "user:anyone", "data": i}),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[tokio::test]
async fn jwt_leeway_forgives_small_clock_skew_only() {
    let gw = Gateway::start(&["--jwt-leeway-secs", "30"]).await;
    let status = |t: String| Connect::new(gw.addr()).token(&t).expect_status();
    assert_eq!(status(Token::new("a").exp_in(-10).hs256()).await, 101);
    assert_eq!(status(Token::new("a").exp_in(-60).hs256()).await, 401);
    assert_eq!(status(Token::new("a").nbf_in(10).hs256()).await, 101);
    assert_eq!(status(Token::new("a").nbf_in(60).hs256()).await, 401);
    // A connection on a token inside its leeway lives until exp + leeway, then 4001.
    let mut c = Client::connect(gw.addr(), &Token::new("a").exp_in(-25).hs256()).await;
    let (disconnect, code) = c.expect_close(secs(20)).await;
    assert_eq!(code, 4001, "{disconnect:?}");
}

/// The series names in the protocol reference's Metrics section.
fn documented_series() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md");
    let section = doc
        .split("\n## Metrics")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    for piece in section.split('`') {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.starts_with("gateway_") && name.len() > "gateway_".len() {
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn every_documented_metric_series_is_exported() {
    let names = documented_series();
    assert!(names.len() >= 15, "{names:?}");
    // A backend for the proxies' series.
    let backend = e2e::Backend::start().await;
    let gw = Gateway::builder()
        .arg("--proxy-rpc-url", backend.url("rpc"))
        .arg("--webhook-url", backend.url("webhook"))
        .arg("--webhook-secret", "a-secret-of-16-bytes-at-least")
        .start()
        .await;
    // Clustered mode has no archive yet: its series are not exported there.
    let archive_on = !gw.args().iter().any(|a| a == "--redis-url");
    // Some activity, so that every series has something to say.
    let mut a = Client::connect(gw.addr(), &token("alice")).await;
    let mut b = Client::connect(gw.addr(), &token("bob")).await;
    a.request_ok("rpc", json!({"method": "echo"})).await;
    a.subscribe("room:m").await;
    b.publish("room:m", json!(1)).await;
    a.expect_message("room:m", secs(5)).await;
    let r = api_post(gw.addr(), "/api/disconnect", json!({"user": "bob"})).await;
    assert_eq!(r.status, 200);
    b.expect_close(secs(5)).await;
    let deadline = Instant::now() + secs(10);
    loop {
        let text = api_get(gw.addr(), "/metrics").await.body;
        let exported: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n)
            })
            .collect();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| archive_on || !n.starts_with("gateway_archive_"))
            .filter(|n| !exported.contains(n.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "documented but not exported: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_drain_deadline_ends_the_process_even_with_a_stuck_client() {
    let mut gw = Gateway::builder()
        .arg("--drain-timeout-secs", 2)
        .arg("--outbound-queue", 1_000_000)
        .arg("--publish-rate", 100000)
        .arg("--publish-burst", 100000)
        .start()
        .await;
    // A client that stops reading with megabytes on its way: its session is stuck writing,
    // so it can neither deliver `disconnect` nor close within the deadline.
    let mut stuck = Client::connect(gw.addr(), &token("stuck")).await;
    stuck.subscribe("room:stuck").await;
    let mut w = Client::connect(gw.addr(), &token("writer")).await;
    let blob = Value::String("s".repeat(60_000));
    for _ in 0..300 {
        w.publish("room:stuck", blob.clone()).await;
    }
    w.close().await;
    let started = Instant::now();
    gw.send_signal("TERM");
    let status = gw
        .wait_exit(secs(15))
        .await
        .expect("the process ends at the drain deadline");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < secs(9),
        "exited {took:?} after SIGTERM with a 2 s deadline"
    );
    let logs = gw.logs();
    let drained = logs
        .iter()
        .find(|l| l.contains("\"drained\""))
        .unwrap_or_else(|| panic!("no drained line: {logs:#?}"));
    assert!(drained.contains("\"left\":1"), "{drained}");
    drop(stuck);
}
