//! A subscriber that stops reading is cut off with `slow_consumer`; others are unaffected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use e2e::{Client, Gateway, as_u64, millis, secs, token};
use serde_json::json;
use tokio::time::Instant;

/// Enough data to fill the kernel socket buffers of the stalled connection (a few MB on
/// loopback) many times over, so its outbound queue must overflow.
const MESSAGES: u64 = 600;
const DATA_BYTES: usize = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_others_get_everything() {
    let gw = Gateway::start(&[
        "--outbound-queue",
        "32",
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
    ])
    .await;
    let addr = gw.addr().to_string();
    let ch = "room:firehose";

    let mut slow = Client::connect(&addr, &token("slow")).await;
    slow.subscribe(ch).await;
    // From here on, `slow` is not polled at all until the end of the test.

    let mut fast = Client::connect(&addr, &token("fast")).await;
    fast.subscribe(ch).await;
    let progress = Arc::new(AtomicU64::new(0));
    let reader = {
        let progress = progress.clone();
        tokio::spawn(async move {
            for expected in 1..=MESSAGES {
                let m = fast.expect_message(ch, secs(30)).await;
                assert_eq!(
                    as_u64(&m["offset"]),
                    expected,
                    "the healthy subscriber must get every message, in order"
                );
                let len = m["data"]["blob"].as_str().map(str::len);
                assert_eq!(len, Some(DATA_BYTES));
                progress.store(expected, Ordering::SeqCst);
            }
            fast
        })
    };

    let mut publisher = Client::connect(&addr, &token("pub")).await;
    let blob = "x".repeat(DATA_BYTES);
    for i in 1..=MESSAGES {
        // Never let the healthy reader fall more than a few messages behind, so only the
        // stalled connection can overflow.
        let deadline = Instant::now() + secs(30);
        while progress.load(Ordering::SeqCst) + 8 < i {
            assert!(
                Instant::now() < deadline,
                "healthy subscriber stuck at {}",
                progress.load(Ordering::SeqCst)
            );
            tokio::time::sleep(millis(1)).await;
        }
        let off = publisher.publish(ch, json!({ "i": i, "blob": blob })).await;
        assert_eq!(off, i);
    }
    let mut fast = reader.await.expect("healthy reader");
    fast.request_ok("ping", json!({})).await;

    // Now the stalled client reads: what it gets is a gap-free prefix of the stream, then the
    // disconnect push and the close.
    let (disconnect, code) = slow.expect_close(secs(20)).await;
    let offsets: Vec<u64> = slow
        .take_pushes()
        .iter()
        .filter(|p| p["op"] == "message")
        .map(|p| as_u64(&p["offset"]))
        .collect();
    assert!(
        offsets.iter().copied().eq(1..=offsets.len() as u64),
        "a slow consumer is cut off, not silently skipped: got offsets {:?}..{:?} ({} messages)",
        offsets.first(),
        offsets.last(),
        offsets.len()
    );
    assert!(
        (offsets.len() as u64) < MESSAGES,
        "the stalled client received everything; the outbound queue never overflowed"
    );
    let d = disconnect.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "slow_consumer", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    assert_eq!(code, 4002);
}
