//! A real nginx, from `deploy/nginx.conf`, before three nodes on one Redis: a user's
//! reconnects land on one node, users spread over the nodes, and a node's death moves its
//! users to live nodes, where they recover by offset without losing or doubling a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::{Client, Connect, Nginx, Redis, api_post, as_str, as_u64, secs};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cluster::{nodes, tok};

const CHANNEL: &str = "room:ng";

/// Connects `user` through nginx, adding the `user` query parameter nginx hashes on.
async fn connect(nginx: &Nginx, user: &str) -> Client {
    Connect::new(&nginx.addr())
        .token(&tok(user))
        .query("user", user)
        .connect()
        .await
}

fn node_of(c: &Client) -> String {
    as_str(&c.welcome["node"]).to_owned()
}

/// Messages on [`CHANNEL`] queued or arriving within `wait` in all; fails on any other push.
async fn drain_messages(c: &mut Client, wait: Duration, into: &mut Vec<Value>) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = c.next_push(left).await else {
            return;
        };
        assert_eq!(p["op"], "message", "unexpected push {p}");
        assert_eq!(p["channel"], CHANNEL, "{p}");
        into.push(p);
    }
}

#[tokio::test]
async fn nginx_keeps_users_on_one_node_and_moves_a_dead_nodes_users_without_loss() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 3).await;
    let upstreams: Vec<String> = gws.iter().map(|g| g.addr().to_string()).collect();
    let upstreams: Vec<&str> = upstreams.iter().map(String::as_str).collect();
    let nginx = Nginx::start(&upstreams).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for gw in &gws {
            let c = Client::connect(gw.addr(), &tok("probe")).await;
            ids.push(node_of(&c));
        }
        ids
    };

    // Sticky: each user's reconnects land on one node; users spread over the nodes.
    let users: Vec<String> = (0..24).map(|i| format!("user{i}")).collect();
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for u in &users {
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let c = connect(&nginx, u).await;
            seen.insert(node_of(&c));
            c.close().await;
        }
        assert_eq!(seen.len(), 1, "{u} landed on {seen:?}");
        home.insert(u.clone(), seen.into_iter().next().unwrap());
    }
    let used: BTreeSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "24 users all on {used:?}");
    assert!(used.iter().all(|n| ids.contains(n)), "{used:?} vs {ids:?}");

    // Everyone subscribes; a backend publishes through nginx the whole time.
    let mut clients = BTreeMap::new();
    for u in &users {
        let mut c = connect(&nginx, u).await;
        assert_eq!(node_of(&c), home[u], "{u} moved between rounds");
        c.request_ok(
            "subscribe",
            json!({"channel": CHANNEL, "join_leave": "off"}),
        )
        .await;
        clients.insert(u.clone(), c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let addr = nginx.addr();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"channel": CHANNEL, "data": n, "idem": format!("ng-{n}")});
                let deadline = Instant::now() + secs(20);
                loop {
                    let r = api_post(&addr, "/api/publish", body.clone()).await;
                    if r.status == 200 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "no publish through nginx: {r:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The busiest node dies (SIGKILL) mid-stream.
    let victim_id = ids
        .iter()
        .max_by_key(|id| home.values().filter(|h| h == id).count())
        .unwrap()
        .clone();
    let victim = ids.iter().position(|id| *id == victim_id).unwrap();
    gws[victim].send_signal("KILL");
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut moved = 0;
    for u in &users {
        let mut c = clients.remove(u).unwrap();
        let seen = got.entry(u.clone()).or_default();
        if home[u] != victim_id {
            drain_messages(&mut c, Duration::from_millis(50), seen).await;
            clients.insert(u.clone(), c);
            continue;
        }
        // The socket ends (nginx closes it when its upstream died).
        c.expect_close(secs(10)).await;
        let pushes = c.take_pushes();
        for p in pushes {
            assert_eq!(p["op"], "message", "{p}");
            seen.push(p);
        }
        // Back through nginx, on a live node, recovering from the last offset seen.
        let mut c = connect(&nginx, u).await;
        let now = node_of(&c);
        assert_ne!(now, victim_id, "{u} sent to the dead node");
        let last = seen.last().expect("a message before the kill");
        let ok = c
            .request_ok(
                "subscribe",
                json!({"channel": CHANNEL, "join_leave": "off",
                       "since": last["offset"], "epoch": last["epoch"]}),
            )
            .await;
        assert_eq!(ok["recovered"], true, "{u}: {ok}");
        home.insert(u.clone(), now);
        clients.insert(u.clone(), c);
        moved += 1;
    }
    assert!(moved > 0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    assert!(sent > 20, "{sent}");

    // Every user has every message once, in order: before the kill, replayed, and live.
    let deadline = Instant::now() + secs(30);
    for (u, c) in clients.iter_mut() {
        let seen = got.get_mut(u).unwrap();
        while (seen.len() as u64) < sent && Instant::now() < deadline {
            drain_messages(c, Duration::from_millis(200), seen).await;
        }
        let data: Vec<u64> = seen.iter().map(|m| as_u64(&m["data"])).collect();
        assert_eq!(data, (0..sent).collect::<Vec<_>>(), "{u}");
        let offs: Vec<u64> = seen.iter().map(|m| as_u64(&m["offset"])).collect();
        assert_eq!(offs, (1..=sent).collect::<Vec<_>>(), "{u}");
    }
    // Still sticky after the move: a moved user's reconnects stay on its new node, and the
    // others never moved.
    for u in users.iter().take(8) {
        let c = connect(&nginx, u).await;
        assert_eq!(node_of(&c), home[u], "{u}");
    }
}
