//! Recovery after reconnect: `subscribe` with `since` and `epoch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use e2e::{Client, Gateway, as_u64, millis, secs, token};
use serde_json::{Value, json};
use tokio::time::Instant;

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(millis(10)).await;
    }
}

fn queued_messages(c: &Client, channel: &str) -> Vec<Value> {
    c.pending_pushes()
        .iter()
        .filter(|p| p["op"] == "message" && p["channel"] == channel)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_gapless_under_continuous_publishing() {
    let gw = Gateway::start(&["--publish-rate", "100000", "--publish-burst", "100000"]).await;
    let addr = gw.addr().to_string();
    let ch = "room:rec";

    let mut sub = Client::connect(&addr, &token("reader")).await;
    let epoch = sub.subscribe(ch).await["epoch"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let last_ack = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, last_ack, addr) = (stop.clone(), last_ack.clone(), addr.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&addr, &token("writer")).await;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let off = c.publish("room:rec", json!({ "n": n })).await;
                assert_eq!(off, n, "single publisher: offset = publish count");
                last_ack.store(off, Ordering::SeqCst);
                tokio::time::sleep(millis(3)).await;
            }
            n
        })
    };

    let mut last = 0;
    for _ in 0..20 {
        let m = sub.expect_message(ch, secs(10)).await;
        let off = as_u64(&m["offset"]);
        assert_eq!(off, last + 1, "live stream must be contiguous");
        assert_eq!(m["epoch"], epoch);
        last = off;
    }
    drop(sub);

    // Let the publisher get well ahead, so there is something to recover.
    wait_until("publishes while disconnected", secs(20), || {
        last_ack.load(Ordering::SeqCst) >= last + 30
    })
    .await;

    let mut sub = Client::connect(&addr, &token("reader")).await;
    let reply = sub
        .request_ok(
            "subscribe",
            json!({"channel": ch, "since": last, "epoch": epoch}),
        )
        .await;
    let early = queued_messages(&sub, ch);
    assert!(
        early.is_empty(),
        "the ok reply must come before the first recovered message; got before it: {early:?}"
    );
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch, "{reply}");
    let latest_at_subscribe = as_u64(&reply["offset"]);
    assert!(latest_at_subscribe >= last + 30, "{reply}");

    // Keep publishing after the re-subscribe so the replay-to-live boundary is crossed.
    wait_until("publishes after re-subscribe", secs(20), || {
        last_ack.load(Ordering::SeqCst) >= latest_at_subscribe + 30
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let final_offset = publisher.await.expect("publisher task");

    let mut expected = last + 1;
    while expected <= final_offset {
        let m = sub.expect_message(ch, secs(10)).await;
        let off = as_u64(&m["offset"]);
        assert_eq!(
            off, expected,
            "after reconnect (since {last}, latest at subscribe {latest_at_subscribe}): \
             expected offset {expected}, got {off} (gap or duplicate)"
        );
        assert_eq!(m["data"], json!({ "n": off }), "{m}");
        expected += 1;
    }
    let extra = sub.next_push_of("message", millis(500)).await;
    assert!(extra.is_none(), "message after the last publish: {extra:?}");
}

#[tokio::test]
async fn subscribe_since_replays_exactly_the_missed_messages() {
    let gw = Gateway::start(&[]).await;
    let mut p = Client::connect(gw.addr(), &token("writer")).await;
    for n in 1..=6 {
        p.publish("room:r2", json!(n)).await;
    }
    let epoch = p.request_ok("history", json!({"channel": "room:r2"})).await["epoch"].clone();

    let mut c = Client::connect(gw.addr(), &token("reader")).await;
    let ok = c
        .request_ok(
            "subscribe",
            json!({"channel": "room:r2", "since": 3, "epoch": epoch}),
        )
        .await;
    assert!(
        queued_messages(&c, "room:r2").is_empty(),
        "ok must come first"
    );
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(as_u64(&ok["offset"]), 6, "{ok}");
    for off in 4..=6 {
        let m = c.expect_message("room:r2", secs(10)).await;
        assert_eq!(as_u64(&m["offset"]), off, "{m}");
        assert_eq!(m["data"], json!(off), "{m}");
    }
    p.publish("room:r2", json!(7)).await;
    let m = c.expect_message("room:r2", secs(10)).await;
    assert_eq!(as_u64(&m["offset"]), 7, "then the live stream: {m}");

    // Without epoch, the current epoch is assumed.
    let mut d = Client::connect(gw.addr(), &token("reader2")).await;
    let ok = d
        .request_ok("subscribe", json!({"channel": "room:r2", "since": 5}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    for off in 6..=7 {
        let m = d.expect_message("room:r2", secs(10)).await;
        assert_eq!(as_u64(&m["offset"]), off, "{m}");
    }

    // since == latest: recovered, nothing to replay.
    let mut e = Client::connect(gw.addr(), &token("reader3")).await;
    let ok = e
        .request_ok(
            "subscribe",
            json!({"channel": "room:r2", "since": 7, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let extra = e.next_push_of("message", millis(500)).await;
    assert!(extra.is_none(), "nothing to replay: {extra:?}");
}

#[tokio::test]
async fn wrong_epoch_is_not_recovered() {
    let gw = Gateway::start(&[]).await;
    let mut p = Client::connect(gw.addr(), &token("writer")).await;
    for n in 1..=3 {
        p.publish("room:ep", json!(n)).await;
    }
    let mut c = Client::connect(gw.addr(), &token("reader")).await;
    let ok = c
        .request_ok(
            "subscribe",
            json!({"channel": "room:ep", "since": 1, "epoch": "not-the-epoch"}),
        )
        .await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_ne!(ok["epoch"], "not-the-epoch");
    let replayed = c.next_push_of("message", millis(700)).await;
    assert!(
        replayed.is_none(),
        "nothing is replayed on an epoch mismatch: {replayed:?}"
    );
    // Still subscribed to the live stream.
    p.publish("room:ep", json!(4)).await;
    let m = c.expect_message("room:ep", secs(10)).await;
    assert_eq!(as_u64(&m["offset"]), 4);
}

#[tokio::test]
async fn since_older_than_history_is_not_recovered() {
    // No archive: what recent history no longer holds is gone (with an archive, recovery
    // reads on into it: see archive.rs).
    let gw = Gateway::start(&["--history-size", "5", "--database-url", "off"]).await;
    let mut p = Client::connect(gw.addr(), &token("writer")).await;
    for n in 1..=20 {
        p.publish("room:old", json!(n)).await;
    }
    let h = p
        .request_ok("history", json!({"channel": "room:old"}))
        .await;
    let epoch = h["epoch"].clone();
    let kept: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| as_u64(&m["offset"]))
        .collect();
    assert_eq!(kept, vec![16, 17, 18, 19, 20], "history keeps the last 5");

    let mut c = Client::connect(gw.addr(), &token("reader")).await;
    let ok = c
        .request_ok(
            "subscribe",
            json!({"channel": "room:old", "since": 2, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], false, "history no longer covers 3: {ok}");

    let mut d = Client::connect(gw.addr(), &token("reader2")).await;
    let ok = d
        .request_ok(
            "subscribe",
            json!({"channel": "room:old", "since": 17, "epoch": epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "history covers 18: {ok}");
    for off in 18..=20 {
        let m = d.expect_message("room:old", secs(10)).await;
        assert_eq!(as_u64(&m["offset"]), off, "{m}");
    }
}
