//! Offsets: contiguous under concurrent publishers, and idempotent publishes.

use std::collections::BTreeSet;

use e2e::{Client, Gateway, as_u64, secs, token};
use serde_json::json;

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_contiguous_under_concurrent_publishers() {
    let gw = Gateway::start(&["--publish-rate", "100000", "--publish-burst", "100000"]).await;
    let addr = gw.addr().to_string();
    let total = PUBLISHERS * PER_PUBLISHER;

    let mut sub = Client::connect(&addr, &token("watcher")).await;
    sub.subscribe("room:race").await;
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::with_capacity(total);
        while offsets.len() < total {
            let m = sub.expect_message("room:race", secs(30)).await;
            offsets.push(as_u64(&m["offset"]));
        }
        // Nothing beyond the last publish.
        let extra = sub.next_push_of("message", secs(3)).await;
        assert!(extra.is_none(), "unexpected extra message: {extra:?}");
        offsets
    });

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let addr = addr.clone();
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr, &token(&format!("pub{p}"))).await;
            let mut acks = Vec::with_capacity(PER_PUBLISHER);
            for i in 0..PER_PUBLISHER {
                acks.push(c.publish("room:race", json!({"p": p, "i": i})).await);
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for p in publishers {
        let mine = p.await.expect("publisher task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one publisher's acks must increase"
        );
        acks.extend(mine);
    }
    let distinct: BTreeSet<u64> = acks.iter().copied().collect();
    assert_eq!(distinct.len(), total, "ack offsets must be distinct");
    assert_eq!(
        distinct,
        (1..=total as u64).collect::<BTreeSet<_>>(),
        "ack offsets must be exactly 1..={total}"
    );

    let received = reader.await.expect("reader task");
    let expected: Vec<u64> = (1..=total as u64).collect();
    if received != expected {
        let first_bad = received
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(received.len().min(expected.len()));
        panic!(
            "subscriber must see offsets 1..={total} in order; first divergence at index {first_bad}: \
             got {:?}",
            &received[first_bad.saturating_sub(3)..(first_bad + 5).min(received.len())]
        );
    }
}

#[tokio::test]
async fn idempotent_publish() {
    let gw = Gateway::start(&[]).await;
    let mut sub = Client::connect(gw.addr(), &token("watcher")).await;
    sub.subscribe("room:idem").await;
    let mut p = Client::connect(gw.addr(), &token("alice")).await;

    let first = p
        .request_ok(
            "publish",
            json!({"channel": "room:idem", "data": "one", "idem": "key-1"}),
        )
        .await;
    let again = p
        .request_ok(
            "publish",
            json!({"channel": "room:idem", "data": "one", "idem": "key-1"}),
        )
        .await;
    assert_eq!(first["offset"], again["offset"], "same idem, same offset");
    let o1 = as_u64(&first["offset"]);

    let second = p
        .request_ok(
            "publish",
            json!({"channel": "room:idem", "data": "two", "idem": "key-2"}),
        )
        .await;
    let o2 = as_u64(&second["offset"]);
    assert_eq!(o2, o1 + 1, "a new idem gets the next offset");

    // The same key on another channel is a different publish.
    let other = p
        .request_ok(
            "publish",
            json!({"channel": "room:idem2", "data": "x", "idem": "key-1"}),
        )
        .await;
    assert_eq!(as_u64(&other["offset"]), 1);

    let m1 = sub.expect_message("room:idem", secs(10)).await;
    assert_eq!(as_u64(&m1["offset"]), o1);
    assert_eq!(m1["data"], "one");
    let m2 = sub.expect_message("room:idem", secs(10)).await;
    assert_eq!(
        as_u64(&m2["offset"]),
        o2,
        "the repeated publish must not be delivered again: {m2}"
    );
    assert_eq!(m2["data"], "two");
    let extra = sub.next_push_of("message", secs(3)).await;
    assert!(extra.is_none(), "unexpected extra message: {extra:?}");

    // An idempotency key over 128 bytes.
    let long = "k".repeat(129);
    let code = p
        .request_err(
            "publish",
            json!({"channel": "room:idem", "data": 1, "idem": long}),
        )
        .await;
    assert_eq!(code, "too_large");
}

#[tokio::test]
async fn full_dedup_table_is_unavailable_and_loses_nothing() {
    let gw = Gateway::start(&["--dedup-max-keys", "2"]).await;
    let mut p = Client::connect(gw.addr(), &token("alice")).await;
    for key in ["a", "b"] {
        p.request_ok(
            "publish",
            json!({"channel": "room:full", "data": key, "idem": key}),
        )
        .await;
    }
    let code = p
        .request_err(
            "publish",
            json!({"channel": "room:full", "data": "c", "idem": "c"}),
        )
        .await;
    assert_eq!(code, "unavailable", "a third key cannot be remembered");
    // Remembered keys still deduplicate, and publishes without a key still go through.
    let again = p
        .request_ok(
            "publish",
            json!({"channel": "room:full", "data": "a", "idem": "a"}),
        )
        .await;
    assert_eq!(as_u64(&again["offset"]), 1);
    let plain = p
        .request_ok("publish", json!({"channel": "room:full", "data": "d"}))
        .await;
    assert_eq!(as_u64(&plain["offset"]), 3);
}
