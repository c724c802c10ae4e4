//! Clustered mode: several gateway processes on one real `redis-server` behave as one node.
//! The cross-node tests run on [`Redis::start`]: with `E2E_REDIS_CLUSTER` set, on a real
//! three-primary Redis Cluster instead (`scripts/test` runs them both ways); those that pause,
//! kill or empty the one server stay on one server (the cluster's own in `redis_cluster`).

use std::time::Duration;

use e2e::{
    Client, Gateway, Redis, RedisServer, RedisUrl, Token, api_get, api_post, api_publish, as_str,
    as_u64, assert_clean, assert_startup_error, eventually, http, metric, run_loadgen_urls, secs,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// A gateway node on `redis`, with short heartbeats so that tests see expiry quickly.
pub(crate) async fn node(redis: &impl RedisUrl, extra: &[(&str, &str)]) -> Gateway {
    let mut builder = Gateway::builder()
        .arg("--redis-url", redis.redis_url())
        .arg("--publish-rate", 100_000)
        .arg("--publish-burst", 100_000);
    for (k, v) in extra {
        builder = builder.arg(k, v);
    }
    builder.start().await
}

pub(crate) async fn nodes(redis: &impl RedisUrl, n: usize) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(node(redis, &[]).await);
    }
    out
}

pub(crate) fn tok(user: &str) -> String {
    Token::new(user).name(user).hs256()
}

/// Reads pushes until `n` messages on `channel` arrived. Presence pushes (`room:` has
/// presence) are checked to be about `channel` and passed over; any other push fails.
pub(crate) async fn messages(
    c: &mut Client,
    channel: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = c.next_push(left).await else {
            panic!(
                "{} of {n} messages on {channel} within {timeout:?}",
                out.len()
            );
        };
        assert_eq!(p["channel"], channel, "unexpected push {p}");
        match p["op"].as_str() {
            Some("message") => out.push(p),
            Some("join" | "leave") => {}
            _ => panic!("unexpected push {p}"),
        }
    }
    out
}

pub(crate) fn offsets(ms: &[Value]) -> Vec<u64> {
    ms.iter().map(|m| as_u64(&m["offset"])).collect()
}

#[tokio::test]
async fn messages_cross_nodes_in_order_with_contiguous_offsets() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 3).await;
    let mut subs = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let mut c = Client::connect(gw.addr(), &tok(&format!("sub{i}"))).await;
        let ok = c.subscribe("room:x").await;
        assert_eq!(ok["offset"], 0, "{ok}");
        subs.push(c);
    }
    // Concurrent publishers, one per node.
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let addr = gw.addr().to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr, &tok(&format!("pub{i}"))).await;
            let mut acks = Vec::new();
            for n in 0..EACH {
                let ok = c
                    .request_ok(
                        "publish",
                        json!({"channel": "room:x", "data": {"node": i, "n": n}}),
                    )
                    .await;
                acks.push(ok);
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    let total = EACH * gws.len();
    let mut acked: Vec<u64> = acks.iter().map(|a| as_u64(&a["offset"])).collect();
    acked.sort();
    assert_eq!(acked, (1..=total as u64).collect::<Vec<_>>());
    for c in subs.iter_mut() {
        let got = messages(c, "room:x", total, secs(20)).await;
        assert_eq!(offsets(&got), (1..=total as u64).collect::<Vec<_>>());
        let epoch = &got[0]["epoch"];
        assert!(got.iter().all(|m| m["epoch"] == *epoch));
        assert!(
            acks.iter().all(|a| a["epoch"] == *epoch),
            "acks carry the epoch"
        );
        // Each publisher's messages keep their order.
        for node in 0..gws.len() {
            let ns: Vec<u64> = got
                .iter()
                .filter(|m| m["data"]["node"] == node)
                .map(|m| as_u64(&m["data"]["n"]))
                .collect();
            assert_eq!(ns, (0..EACH as u64).collect::<Vec<_>>());
        }
    }
}

#[tokio::test]
async fn recovery_on_another_node_is_exact() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 3).await;
    let mut c = Client::connect(gws[0].addr(), &tok("ann")).await;
    let mut p = Client::connect(gws[1].addr(), &tok("pete")).await;
    c.subscribe("room:r").await;
    for n in 0..3 {
        p.publish("room:r", json!(n)).await;
    }
    let seen = messages(&mut c, "room:r", 3, secs(10)).await;
    let epoch = seen[2]["epoch"].clone();
    c.close().await;
    for n in 3..8 {
        p.publish("room:r", json!(n)).await;
    }
    // Back on another node, from offset 3.
    let mut c = Client::connect(gws[2].addr(), &tok("ann")).await;
    let ok = c
        .request_ok(
            "subscribe",
            json!({"channel": "room:r", "since": 3, "epoch": epoch}),
        )
        .await;
    assert_eq!(
        (ok["recovered"].clone(), ok["offset"].clone()),
        (json!(true), json!(8))
    );
    let replay = messages(&mut c, "room:r", 5, secs(10)).await;
    assert_eq!(offsets(&replay), vec![4, 5, 6, 7, 8]);
    assert_eq!(replay[0]["data"], 3);
    // And live after it, from any node.
    p.publish("room:r", json!(8)).await;
    let live = messages(&mut c, "room:r", 1, secs(10)).await;
    assert_eq!(offsets(&live), vec![9]);
    // History through the API of a third node agrees.
    let r = api_get(gws[0].addr(), "/api/history/room:r?since=6").await;
    let h = r.json();
    assert_eq!(
        offsets(h["messages"].as_array().unwrap()),
        vec![7, 8, 9],
        "{h}"
    );
}

/// The next presence push, failing on anything else.
async fn presence_push(c: &mut Client, timeout: Duration) -> Value {
    let p = c
        .next_push(timeout)
        .await
        .unwrap_or_else(|| panic!("no presence push within {timeout:?}"));
    assert!(
        p["op"] == "join" || p["op"] == "leave",
        "unexpected push {p}"
    );
    json!({"op": p["op"], "channel": p["channel"], "user": p["user"]})
}

#[tokio::test]
async fn presence_is_global_and_join_leave_cross_nodes_once() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 3).await;
    let mut ann = Client::connect(gws[0].addr(), &tok("ann")).await;
    ann.subscribe("room:p").await;
    assert_eq!(
        presence_push(&mut ann, secs(5)).await,
        json!({"op": "join", "channel": "room:p", "user": "ann"})
    );
    // Bob on two nodes: one join, pushed on every node.
    let mut bob1 = Client::connect(gws[1].addr(), &tok("bob")).await;
    bob1.subscribe("room:p").await;
    let mut bob2 = Client::connect(gws[2].addr(), &tok("bob")).await;
    bob2.subscribe("room:p").await;
    assert_eq!(
        presence_push(&mut ann, secs(5)).await,
        json!({"op": "join", "channel": "room:p", "user": "bob"})
    );
    let members = ann
        .request_ok("presence", json!({"channel": "room:p"}))
        .await;
    assert_eq!(
        members["members"],
        json!([
            {"user": "ann", "name": "ann", "conns": 1},
            {"user": "bob", "name": "bob", "conns": 2}
        ])
    );
    bob1.request_ok("unsubscribe", json!({"channel": "room:p"}))
        .await;
    bob2.request_ok("unsubscribe", json!({"channel": "room:p"}))
        .await;
    assert_eq!(
        presence_push(&mut ann, secs(5)).await,
        json!({"op": "leave", "channel": "room:p", "user": "bob"})
    );
    assert!(ann.next_push(secs(3)).await.is_none(), "one leave only");
}

#[tokio::test]
async fn a_killed_nodes_users_leave_presence_by_themselves() {
    let redis = Redis::start().await;
    let a = node(&redis, &[("--presence-heartbeat-secs", "1")]).await;
    let b = node(&redis, &[("--presence-heartbeat-secs", "1")]).await;
    let mut ann = Client::connect(a.addr(), &tok("ann")).await;
    ann.subscribe("room:k").await;
    presence_push(&mut ann, secs(5)).await;
    // Carl, on node a, hears of changes in diffs, bob's from node b included.
    let mut carl = Client::connect(a.addr(), &tok("carl")).await;
    carl.request_ok(
        "subscribe",
        json!({"channel": "room:k", "join_leave": "diff"}),
    )
    .await;
    let mut bob = Client::connect(b.addr(), &tok("bob")).await;
    bob.subscribe("room:k").await;
    let mut bob2 = Client::connect(b.addr(), &tok("bob")).await;
    bob2.subscribe("room:k").await;
    assert_eq!(presence_push(&mut ann, secs(5)).await["user"], "carl");
    assert_eq!(presence_push(&mut ann, secs(5)).await["op"], "join");
    let stats = ann
        .request_ok("presence_stats", json!({"channel": "room:k"}))
        .await;
    assert_eq!(stats, json!({"users": 3, "conns": 4}));
    let joined = carl
        .next_push(secs(5))
        .await
        .expect("a diff with carl and bob");
    let mut joins = joined["joins"].as_array().cloned().unwrap_or_default();
    while joins.len() < 2 {
        let more = carl.next_push(secs(5)).await.expect("bob's join in a diff");
        joins.extend(more["joins"].as_array().cloned().unwrap_or_default());
    }
    joins.sort_by_key(|u| u.to_string());
    assert_eq!(joins, vec![json!("bob"), json!("carl")]);
    let killed = Instant::now();
    b.send_signal("KILL");
    let leave = presence_push(&mut ann, secs(15)).await;
    assert_eq!(
        leave,
        json!({"op": "leave", "channel": "room:k", "user": "bob"})
    );
    eprintln!("a killed node's presence cleared in {:?}", killed.elapsed());
    let members = ann
        .request_ok("presence", json!({"channel": "room:k"}))
        .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    let stats = ann
        .request_ok("presence_stats", json!({"channel": "room:k"}))
        .await;
    assert_eq!(
        stats,
        json!({"users": 2, "conns": 2}),
        "the dead node's counts went too"
    );
    let diff = carl
        .next_push(secs(5))
        .await
        .expect("bob's leave in a diff");
    assert_eq!(
        diff,
        json!({"op": "presence_diff", "channel": "room:k", "joins": [], "leaves": ["bob"]})
    );
}

#[tokio::test]
async fn api_disconnect_and_unsubscribe_reach_every_node() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 2).await;
    let mut bob = Client::connect(gws[1].addr(), &tok("bob")).await;
    bob.subscribe("room:u").await;
    // Unsubscribe from node 0: bob's socket on node 1 gets the push and loses the channel.
    let r = api_post(
        gws[0].addr(),
        "/api/unsubscribe",
        json!({"user": "bob", "channel": "room:u"}),
    )
    .await;
    assert_eq!(r.json(), json!({"unsubscribed": 1}), "{r:?}");
    let push = bob
        .next_push_of("unsubscribe", secs(5))
        .await
        .expect("unsubscribe push");
    assert_eq!(push["channel"], "room:u");
    assert_eq!(push["resubscribe"], false);
    let err = bob
        .request_err("unsubscribe", json!({"channel": "room:u"}))
        .await;
    assert_eq!(err, "not_subscribed");
    // Disconnect from node 0 closes bob's socket on node 1.
    let r = api_post(
        gws[0].addr(),
        "/api/disconnect",
        json!({"user": "bob", "reconnect": false}),
    )
    .await;
    assert_eq!(r.json(), json!({"disconnected": 1}), "{r:?}");
    let (push, code) = bob.expect_close(secs(5)).await;
    assert_eq!(code, 4005);
    assert_eq!(push.unwrap()["code"], "disconnected");
    // Nodes list both nodes, from either.
    let r = api_get(gws[1].addr(), "/api/nodes").await;
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 2, "{r:?}");
}

#[tokio::test]
async fn redis_paused_means_unavailable_fast_and_not_ready_then_recovers() {
    let mut redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut sub = Client::connect(gws[0].addr(), &tok("sue")).await;
    sub.subscribe("room:o").await;
    let mut p = Client::connect(gws[1].addr(), &tok("pat")).await;
    p.publish("room:o", json!(1)).await;
    messages(&mut sub, "room:o", 1, secs(5)).await;
    redis.pause();
    let started = Instant::now();
    // A timed-out publish may still be carried out once Redis answers again: clients retry
    // with the same idempotency key, and the message is delivered once.
    let second = json!({"channel": "room:o", "data": 2, "idem": "second"});
    let err = p.request_err("publish", second.clone()).await;
    let took = started.elapsed();
    assert_eq!(err, "unavailable");
    assert!(took < secs(3), "publish answered after {took:?}");
    let mut ready = 0;
    for _ in 0..50 {
        ready = http(gws[1].addr(), "GET", "/readyz", &[], None)
            .await
            .status;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 503, "readiness while Redis is paused");
    redis.resume();
    // Back: ready again, publishing again, delivery contiguous.
    let deadline = Instant::now() + secs(15);
    loop {
        let r = p.request("publish", second.clone()).await;
        if let Some(ok) = r.get("ok") {
            assert_eq!(ok["offset"], 2, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "no publish after resume: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = messages(&mut sub, "room:o", 1, secs(10)).await;
    assert_eq!(offsets(&got), vec![2]);
    assert_eq!(got[0]["data"], 2);
    assert_eq!(
        http(gws[1].addr(), "GET", "/readyz", &[], None)
            .await
            .status,
        200
    );

    // Killed and restarted empty: a new epoch; subscribers are told to resubscribe, and
    // recovery from the old epoch says to reload. Nothing hangs.
    let old_epoch = got[0]["epoch"].clone();
    redis.restart_empty().await;
    let deadline = Instant::now() + secs(20);
    let ack = loop {
        let r = p
            .request(
                "publish",
                json!({"channel": "room:o", "data": 4, "idem": "fourth"}),
            )
            .await;
        if let Some(ok) = r.get("ok") {
            break ok.clone();
        }
        assert!(Instant::now() < deadline, "no publish after restart: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(ack["epoch"], old_epoch);
    assert_eq!(ack["offset"], 1);
    let deadline = Instant::now() + secs(20);
    let push = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let push = sub.next_push(left).await.expect("a resubscribe notice");
        if push["op"] == "unsubscribe" {
            break push;
        }
        // Only new-epoch messages may come before it.
        assert_eq!(push["op"], "message", "{push}");
        assert_ne!(push["epoch"], old_epoch, "{push}");
    };
    assert_eq!(
        (as_str(&push["code"]), push["resubscribe"].clone()),
        ("insufficient_state", json!(true))
    );
    let ok = sub
        .request_ok(
            "subscribe",
            json!({"channel": "room:o", "since": 2, "epoch": old_epoch}),
        )
        .await;
    assert_eq!(ok["recovered"], false);
    assert_eq!(ok["epoch"], ack["epoch"]);
}

#[tokio::test]
async fn a_lagging_pubsub_receiver_is_healed_from_history() {
    let redis = Redis::start().await;
    // A receiver of 1 message lags at once under a burst.
    let slow = node(&redis, &[("--redis-pubsub-capacity", "1")]).await;
    let fast = node(&redis, &[]).await;
    let mut sub = Client::connect(slow.addr(), &tok("sam")).await;
    sub.subscribe("room:l").await;
    // Frozen while the burst is published: on waking it reads the whole burst at once, far
    // more than its receiver holds.
    slow.send_signal("STOP");
    let total = 300;
    for n in 0..total {
        let r = api_post(
            fast.addr(),
            "/api/publish",
            json!({"channel": "room:l", "data": n}),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    slow.send_signal("CONT");
    let got = messages(&mut sub, "room:l", total, secs(30)).await;
    assert_eq!(offsets(&got), (1..=total as u64).collect::<Vec<_>>());
    // The node did lag, and healing delivered what the receiver dropped.
    assert!(metric(slow.addr(), "gateway_broker_lagged_total").await > Some(0.0));
    assert!(metric(slow.addr(), "gateway_broker_healed_total").await > Some(0.0));
    assert_eq!(
        metric(slow.addr(), "gateway_broker_lost_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn loadgen_broadcast_across_nodes_audits_clean() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 3).await;
    // Subscribers on the first two nodes, publishers on the third: every delivery crosses.
    let publisher_url = format!("ws://{}/ws", gws[2].addr());
    let (ok, json) = tokio::task::spawn_blocking({
        let a = gws[0].addr().to_string();
        let b = gws[1].addr().to_string();
        move || {
            let args = [
                "broadcast",
                "--subscribers",
                "100",
                "--publishers",
                "2",
                "--rate",
                "50",
                "--duration",
                "3",
                "--publisher-url",
                &publisher_url,
            ];
            run_loadgen_urls(&[&a, &b], &args)
        }
    })
    .await
    .unwrap();
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 102);
    assert!(json["sent"].as_u64().unwrap() >= 2 * 50 * 2, "{json:#}");
    assert_eq!(json["received"], json["expected"], "{json:#}");
}

#[tokio::test]
async fn presence_comes_back_after_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, &[("--presence-heartbeat-secs", "1")]).await;
    let b = node(&redis, &[("--presence-heartbeat-secs", "1")]).await;
    let mut ann = Client::connect(a.addr(), &tok("ann")).await;
    ann.subscribe("room:q").await;
    assert_eq!(presence_push(&mut ann, secs(5)).await["user"], "ann");
    let mut bob = Client::connect(b.addr(), &tok("bob")).await;
    bob.subscribe("room:q").await;
    assert_eq!(presence_push(&mut ann, secs(5)).await["user"], "bob");
    redis.restart_empty().await;
    // Each node puts its users back at its next heartbeat, and says so.
    let mut back = Vec::new();
    for _ in 0..2 {
        let p = presence_push(&mut ann, secs(15)).await;
        assert_eq!(p["op"], "join", "{p}");
        back.push(p["user"].as_str().unwrap().to_owned());
    }
    back.sort();
    assert_eq!(back, ["ann", "bob"]);
    let members = ann
        .request_ok("presence", json!({"channel": "room:q"}))
        .await;
    assert_eq!(
        members["members"],
        json!([
            {"user": "ann", "name": "ann", "conns": 1},
            {"user": "bob", "name": "bob", "conns": 1}
        ])
    );
}

#[tokio::test]
async fn messages_published_while_a_node_reconnects_arrive_in_order() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 2).await;
    let mut sub = Client::connect(gws[0].addr(), &tok("sid")).await;
    sub.subscribe("room:b").await;
    let total = 200;
    let publisher = {
        let addr = gws[1].addr().to_string();
        tokio::spawn(async move {
            for n in 0..total {
                let r = api_post(
                    &addr,
                    "/api/publish",
                    json!({"channel": "room:b", "data": n}),
                )
                .await;
                assert_eq!(r.status, 200, "{r:?}");
            }
        })
    };
    // Cut every node's pub/sub connection in the middle of the stream: what is published
    // before they are back never reaches them by pub/sub.
    tokio::time::sleep(Duration::from_millis(30)).await;
    for killed in redis.command_all("CLIENT KILL TYPE pubsub").await {
        assert!(
            killed.parse::<u64>().is_ok(),
            "CLIENT KILL answered {killed:?}"
        );
    }
    publisher.await.unwrap();
    let got = messages(&mut sub, "room:b", total, secs(30)).await;
    assert_eq!(offsets(&got), (1..=total as u64).collect::<Vec<_>>());
    // What pub/sub missed came from the stream.
    assert!(metric(gws[0].addr(), "gateway_broker_healed_total").await > Some(0.0));
}

/// The node `/v1/route` on `gw` names for `user`.
async fn route(gw: &Gateway, user: &str) -> String {
    let r = http(
        gw.addr(),
        "GET",
        &format!("/v1/route?token={}", tok(user)),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    as_str(&r.json()["node"]).to_owned()
}

/// Waits until `gw` routes `user` to node `id`.
async fn until_route(gw: &Gateway, user: &str, id: &str, what: &str) {
    let deadline = Instant::now() + secs(20);
    loop {
        let home = route(gw, user).await;
        if home == id {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {user} still routed to {home}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `gw`'s `/api/nodes` shows `check` true of its node list.
async fn until_nodes(gw: &Gateway, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + secs(20);
    loop {
        let r = api_get(gw.addr(), "/api/nodes").await;
        let nodes = r.json()["nodes"].as_array().cloned().unwrap_or_default();
        if check(&nodes) {
            return nodes;
        }
        assert!(Instant::now() < deadline, "{what}: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn route_spreads_users_passes_over_full_and_draining_nodes_and_counts_misrouted() {
    let redis = Redis::start().await;
    let a = node(&redis, &[]).await;
    let b = node(&redis, &[("--max-connections", "3")]).await;
    let nodes = until_nodes(&a, "both nodes listed", |n| n.len() == 2).await;
    let id = |gw: &Gateway| {
        let port = gw.addr().rsplit(':').next().unwrap().to_owned();
        nodes
            .iter()
            .find(|n| as_str(&n["url"]).contains(&format!(":{port}/")))
            .map(|n| as_str(&n["id"]).to_owned())
            .unwrap()
    };
    let (ida, idb) = (id(&a), id(&b));
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == idb.as_str() && n["capacity"] == 3)
    );
    // Every node answers alike, and users spread over both.
    let users: Vec<String> = (0..40).map(|i| format!("rt{i}")).collect();
    let mut home = std::collections::BTreeMap::new();
    for u in &users {
        let h = route(&a, u).await;
        assert_eq!(route(&b, u).await, h, "{u}");
        home.insert(u.clone(), h);
    }
    let on_b: Vec<&String> = users.iter().filter(|u| home[*u] == idb).collect();
    let on_a: Vec<&String> = users.iter().filter(|u| home[*u] == ida).collect();
    assert!(on_a.len() >= 5 && on_b.len() >= 5, "{home:?}");

    // A connection whose home is another node counts as misrouted there, once the node has
    // read the registry with both nodes (at its heartbeat, every 5 s): connect away users
    // until one counts, then every later one counts exactly once and a user at home never.
    let misrouted = || async {
        metric(a.addr(), "gateway_misrouted_connections_total")
            .await
            .unwrap_or(0.0)
    };
    eventually(
        "node a counts a misrouted connection",
        secs(20),
        async || {
            let before = misrouted().await;
            let away = Client::connect(a.addr(), &tok(on_b[0])).await;
            let counted = misrouted().await > before;
            away.close().await;
            counted
        },
    )
    .await;
    let before = misrouted().await;
    let _home = Client::connect(a.addr(), &tok(on_a[0])).await;
    assert_eq!(misrouted().await, before, "a user at home");
    let _away = Client::connect(a.addr(), &tok(on_b[0])).await;
    assert_eq!(misrouted().await, before + 1.0, "a user away");

    // Node b full (3 of 3): its users are routed to a until it has room again.
    let mut held = Vec::new();
    for u in on_b.iter().take(3) {
        held.push(Client::connect(b.addr(), &tok(u)).await);
    }
    // `/api/nodes` shows the live count at once; routing follows the registry, which has it
    // after b's next heartbeat.
    until_nodes(&a, "b full", |n| {
        n.iter()
            .any(|n| n["id"] == idb.as_str() && n["connections"] == 3)
    })
    .await;
    until_route(&a, on_b[0], &ida, "b full in the registry").await;
    for u in &on_b {
        assert_eq!(route(&a, u).await, ida, "{u} while b is full");
    }
    for u in &on_a {
        assert_eq!(route(&a, u).await, ida, "{u}");
    }
    held.pop().unwrap().close().await;
    until_route(&a, on_b[3], &idb, "b with room again in the registry").await;

    // Draining, b leaves the registry at once (no wait for its entry to expire, which takes
    // 15 s: the deadline is well short of that, and generous for a loaded machine).
    b.send_signal("TERM");
    let deadline = Instant::now() + secs(10);
    for u in on_b.iter().cycle() {
        if route(&a, u).await == ida {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "route still names b after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for u in &users {
        assert_eq!(route(&a, u).await, ida, "{u}");
    }
}

#[tokio::test]
async fn a_node_with_another_partition_count_refuses_to_start() {
    let redis = Redis::start().await;
    let _first = node(&redis, &[]).await;
    // Nodes with different counts would look for a channel in different places.
    let (status, out) = Gateway::builder()
        .arg("--redis-url", redis.redis_url())
        .arg("--redis-partitions", 8)
        .run_to_exit(secs(15))
        .await;
    assert_startup_error(&status, &out, &["16 partitions", "--redis-partitions"]);
    // The same count as the first node is fine.
    let again = node(&redis, &[("--redis-partitions", "16")]).await;
    let r = api_get(again.addr(), "/api/nodes").await;
    assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 2, "{r:?}");
}

/// Connects `n` users (`<prefix><i>`) to `gw` at once.
async fn connect_burst(gw: &Gateway, prefix: &str, n: usize) -> Vec<Client> {
    futures_util::future::join_all(
        (0..n).map(
            |i| async move { Client::connect(gw.addr(), &tok(&format!("{prefix}{i}"))).await },
        ),
    )
    .await
}

#[tokio::test]
async fn a_connect_burst_subscribes_every_personal_channel() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 2).await;
    // The personal channels' subscriptions of a burst go out batched (on a cluster, one
    // batch per partition): each still reaches its user, from the other node.
    let n = 200;
    let mut users = connect_burst(&gws[0], "burst", n).await;
    for i in 0..n {
        api_publish(gws[1].addr(), &format!("user:burst{i}"), json!(i)).await;
    }
    for (i, user) in users.iter_mut().enumerate() {
        let got = messages(user, &format!("user:burst{i}"), 1, secs(10)).await;
        assert_eq!(got[0]["data"], i, "{got:?}");
    }
    // And a burst of disconnects unsubscribes them, batched too: a publish to a gone user's
    // channel reaches nobody and breaks nothing.
    for user in users {
        user.close().await;
    }
    let mut late = Client::connect(gws[0].addr(), &tok("burst7")).await;
    api_publish(gws[1].addr(), "user:burst7", json!("again")).await;
    let got = messages(&mut late, "user:burst7", 1, secs(10)).await;
    assert_eq!(got[0]["data"], "again");
}

/// Redis commands of one kind (`cmdstat_<name>`) since the last `CONFIG RESETSTAT`, over
/// every server.
async fn redis_calls(redis: &Redis, name: &str) -> u64 {
    let prefix = format!("cmdstat_{name}:calls=");
    redis
        .command_all("INFO commandstats")
        .await
        .iter()
        .flat_map(|reply| reply.lines())
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn quiet_channels_are_checked_once_a_sweep_and_a_lost_state_is_still_found() {
    let redis = Redis::start().await;
    // A check a second for channels with traffic, every channel once in 4 s.
    let gw = node(
        &redis,
        &[
            ("--position-check-secs", "1"),
            ("--position-sweep-secs", "4"),
        ],
    )
    .await;
    let n = 100;
    let _idle = connect_burst(&gw, "idle", n).await;
    let mut sub = Client::connect(gw.addr(), &tok("quinn")).await;
    sub.subscribe("room:q").await;
    api_publish(gw.addr(), "room:q", json!(1)).await;
    messages(&mut sub, "room:q", 1, secs(5)).await;
    // Once the room has been quiet for a sweep period, over 4 s every one of the 102 channels
    // is read about once (four or five slices), where a check of every channel each second
    // would read each of them about four times.
    // Measured as the time the position reads take to reach two sweeps' worth (a loaded
    // machine's clock runs on regardless): about 8 s with the sweep, 2 s without it.
    tokio::time::sleep(secs(6)).await;
    redis.command_all("CONFIG RESETSTAT").await;
    let counting = Instant::now();
    let channels = (n + 2) as u64;
    eventually(
        "two sweeps' worth of position reads",
        secs(60),
        async || redis_calls(&redis, "hmget").await >= 2 * channels,
    )
    .await;
    let reads = redis_calls(&redis, "hmget").await;
    let sweeps = counting.elapsed().as_secs_f64() / 4.0;
    let per_channel_per_sweep = reads as f64 / channels as f64 / sweeps;
    assert!(
        (0.25..2.5).contains(&per_channel_per_sweep),
        "{reads} position reads of {channels} channels in {sweeps:.2} sweeps"
    );
    // Redis loses the quiet room's state: the sweep still finds it, and its subscriber is
    // told to reload.
    redis.command_all("FLUSHALL").await;
    let push = sub
        .next_push_of("unsubscribe", secs(15))
        .await
        .expect("a resubscribe notice");
    assert_eq!(
        (
            as_str(&push["channel"]),
            as_str(&push["code"]),
            push["resubscribe"].clone()
        ),
        ("room:q", "insufficient_state", json!(true)),
        "{push}"
    );
}

#[tokio::test]
async fn channels_and_node_counters_are_answered_for_the_whole_cluster() {
    let redis = Redis::start().await;
    let gws = [
        node(&redis, &[("--node-id", "node-a")]).await,
        node(&redis, &[("--node-id", "node-b")]).await,
    ];
    let mut clients = Vec::new();
    for (i, gw) in [0, 0, 0, 1, 1].into_iter().enumerate() {
        let mut c = Client::connect(gws[gw].addr(), &tok(&format!("ch{i}"))).await;
        c.subscribe("room:busy").await;
        clients.push(c);
    }
    let mut quiet = Client::connect(gws[1].addr(), &tok("chq")).await;
    quiet.subscribe("room:quiet").await;
    let r = api_get(gws[0].addr(), "/api/channels").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"channels": [
            {"channel": "room:busy", "subscribers": 5},
            {"channel": "room:quiet", "subscribers": 1},
        ], "total": 2}),
        "personal channels are not listed"
    );
    let r = api_get(gws[1].addr(), "/api/channels?filter=qui&limit=1").await;
    assert_eq!(
        r.json(),
        json!({"channels": [{"channel": "room:quiet", "subscribers": 1}], "total": 1})
    );
    let r = api_get(gws[1].addr(), "/api/channels?limit=1").await;
    assert_eq!(r.json()["channels"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["total"], 2);
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let r = api_get(gws[0].addr(), &format!("/api/channels?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    // One message through node 1's API reaches five subscribers on two nodes.
    api_publish(gws[1].addr(), "room:busy", json!("hi")).await;
    for c in &mut clients {
        messages(c, "room:busy", 1, secs(5)).await;
    }
    let r = api_get(gws[0].addr(), "/api/nodes").await;
    let list = r.json()["nodes"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{r:?}");
    let by_id = |id: &str| list.iter().find(|n| n["id"] == id).unwrap().clone();
    let (a, b) = (by_id("node-a"), by_id("node-b"));
    // Subscriptions count the personal channels too: 3 + 3 there, 3 + 3 rooms.
    for (field, on_a, on_b) in [
        ("connections", 3, 3),
        ("subscriptions", 6, 6),
        ("channels", 1, 2),
        ("published", 0, 1),
        ("delivered", 3, 2),
    ] {
        assert_eq!(
            (&a[field], &b[field]),
            (&json!(on_a), &json!(on_b)),
            "{field}"
        );
    }
}
