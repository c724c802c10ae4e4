//! Presence pushes: `join` on a user's first subscribing connection, `leave` after their last.

use std::time::Duration;

use e2e::{Client, Gateway, Token, as_u64, millis, secs};
use serde_json::{Value, json};
use tokio::time::Instant;

fn tok(user: &str) -> String {
    Token::new(user).name(&format!("{user} display")).hs256()
}

/// The next `join`/`leave` push about someone other than `me`.
async fn next_presence(c: &mut Client, me: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = c.next_push(left).await?;
        assert!(
            p["op"] == "join" || p["op"] == "leave",
            "only presence pushes are expected here, got {p}"
        );
        if p["user"] != me {
            return Some(p);
        }
    }
}

/// The `op`, `channel` and `user` of a presence push (other fields may be added by the
/// gateway).
fn core(p: &Value) -> Value {
    json!({"op": p["op"], "channel": p["channel"], "user": p["user"]})
}

async fn bob_conns(c: &mut Client) -> u64 {
    let p = c.request_ok("presence", json!({"channel": "room:x"})).await;
    p["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{p}"))
        .iter()
        .find(|m| m["user"] == "bob")
        .map(|m| as_u64(&m["conns"]))
        .unwrap_or(0)
}

#[tokio::test]
async fn join_and_leave_follow_first_and_last_connection() {
    let gw = Gateway::start(&[]).await;
    let mut alice = Client::connect(gw.addr(), &tok("alice")).await;
    alice.subscribe("room:x").await;

    let mut bob1 = Client::connect(gw.addr(), &tok("bob")).await;
    bob1.subscribe("room:x").await;
    let j = next_presence(&mut alice, "alice", secs(10))
        .await
        .expect("join for bob's first connection");
    assert_eq!(
        core(&j),
        json!({"op": "join", "channel": "room:x", "user": "bob"})
    );

    let mut bob2 = Client::connect(gw.addr(), &tok("bob")).await;
    bob2.subscribe("room:x").await;
    // A marker: carol joins after bob's second connection subscribed. The next presence push
    // alice sees must be carol's join, not a second join for bob.
    let mut carol = Client::connect(gw.addr(), &tok("carol")).await;
    carol.subscribe("room:x").await;
    let p = next_presence(&mut alice, "alice", secs(10))
        .await
        .expect("join for carol");
    assert_eq!(
        core(&p),
        json!({"op": "join", "channel": "room:x", "user": "carol"}),
        "no second join for bob's second connection"
    );
    assert_eq!(bob_conns(&mut alice).await, 2);

    // Closing one of bob's two connections: no leave.
    bob1.close().await;
    let deadline = Instant::now() + secs(10);
    while bob_conns(&mut alice).await != 1 {
        assert!(
            Instant::now() < deadline,
            "presence still counts 2 connections for bob"
        );
        tokio::time::sleep(millis(50)).await;
    }
    carol
        .request_ok("unsubscribe", json!({"channel": "room:x"}))
        .await;
    let p = next_presence(&mut alice, "alice", secs(10))
        .await
        .expect("leave for carol");
    assert_eq!(
        core(&p),
        json!({"op": "leave", "channel": "room:x", "user": "carol"}),
        "no leave for bob while he still has a connection"
    );

    // Closing the last one: leave (an abrupt drop, without a close handshake).
    drop(bob2);
    let p = next_presence(&mut alice, "alice", secs(10))
        .await
        .expect("leave for bob's last connection");
    assert_eq!(
        core(&p),
        json!({"op": "leave", "channel": "room:x", "user": "bob"})
    );
    assert_eq!(bob_conns(&mut alice).await, 0);
}

#[tokio::test]
async fn unsubscribe_of_last_connection_leaves() {
    let gw = Gateway::start(&[]).await;
    let mut alice = Client::connect(gw.addr(), &tok("alice")).await;
    alice.subscribe("room:y").await;
    let mut bob = Client::connect(gw.addr(), &tok("bob")).await;
    bob.subscribe("room:y").await;
    let j = next_presence(&mut alice, "alice", secs(10)).await;
    assert_eq!(
        j.as_ref().map(core),
        Some(json!({"op": "join", "channel": "room:y", "user": "bob"}))
    );
    bob.request_ok("unsubscribe", json!({"channel": "room:y"}))
        .await;
    let l = next_presence(&mut alice, "alice", secs(10)).await;
    assert_eq!(
        l.as_ref().map(core),
        Some(json!({"op": "leave", "channel": "room:y", "user": "bob"}))
    );
    // A channel of a namespace without presence, which both have: no join, no leave.
    let quiet = |user: &str| Token::new(user).channels(&["quiet:*"]).hs256();
    let mut alice2 = Client::connect(gw.addr(), &quiet("alice")).await;
    alice2.subscribe("quiet:z").await;
    let mut bob2 = Client::connect(gw.addr(), &quiet("bob")).await;
    bob2.subscribe("quiet:z").await;
    bob2.request_ok("unsubscribe", json!({"channel": "quiet:z"}))
        .await;
    drop(bob2);
    let none = alice2.next_push(millis(500)).await;
    assert!(none.is_none(), "{none:?}");
    // The channel works: alice2 is subscribed and hears messages on it.
    bob.request_ok("refresh", json!({"token": quiet("bob")}))
        .await;
    bob.publish("quiet:z", json!("hi")).await;
    alice2.expect_message("quiet:z", secs(5)).await;
}
