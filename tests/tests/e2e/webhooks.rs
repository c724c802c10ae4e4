//! Webhooks: what happens in channels of namespaces with `webhooks = true` reaches the app's
//! backend (`tests/backend/backend.mjs`, a real HTTP server that checks each signature) once
//! per cluster, in order per channel, after retries while the backend is down; a dead node's
//! members are reported gone.

use e2e::{
    Backend, Client, Gateway, Redis, RedisUrl, TempDir, api_get, eventually, metric, secs, token,
};
use serde_json::json;
use std::collections::HashSet;

const SECRET: &str = "webhook-secret-for-the-tests";
const NAMESPACES: &str =
    "[[namespaces]]\nprefix = \"live:\"\nopen = true\nclient_publish = true\nwebhooks = true\n";

/// A gateway sending every webhook event to `backend`; on `redis` when given.
async fn node(backend: &Backend, redis: Option<&Redis>, dir: &TempDir) -> Gateway {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, NAMESPACES).unwrap();
    let mut builder = Gateway::builder()
        .arg("--config", config.display())
        .arg("--webhook-url", backend.url("webhook"))
        .arg("--webhook-secret", SECRET)
        .arg("--webhook-key", "test-app")
        .arg(
            "--webhook-events",
            "channel_occupied,channel_vacated,member_added,member_removed,client_event",
        )
        .arg("--presence-heartbeat-secs", 1);
    if let Some(redis) = redis {
        builder = builder.arg("--redis-url", redis.redis_url());
    }
    builder.start().await
}

/// The events received, as `name channel user` lines, in order of arrival.
async fn received(backend: &Backend) -> Vec<String> {
    backend
        .webhook_events()
        .await
        .iter()
        .map(|e| {
            let mut line = format!(
                "{} {}",
                e["name"].as_str().unwrap(),
                e["channel"].as_str().unwrap()
            );
            if let Some(user) = e["user_id"].as_str() {
                line.push(' ');
                line.push_str(user);
            }
            line
        })
        .collect()
}

/// Waits until `expected` were received (in that order, nothing else among them).
async fn expect_events(backend: &Backend, expected: &[&str]) {
    eventually("the webhook events arrive", secs(60), async || {
        received(backend).await.len() >= expected.len()
    })
    .await;
    assert_eq!(received(backend).await, expected);
}

/// Every batch was signed with the secret and named the app; no event id came twice.
async fn assert_signed_and_unique(backend: &Backend) {
    let batches = backend.webhooks().await;
    for b in &batches {
        assert_eq!(
            b["verified"], true,
            "a batch whose signature does not verify: {b}"
        );
        assert_eq!(b["key"], "test-app");
    }
    let mut ids = HashSet::new();
    for e in backend.webhook_events().await {
        let id = e["id"].as_str().expect("every event has an id").to_owned();
        assert!(ids.insert(id), "an event came twice: {e}");
    }
}

async fn users_present(gw: &Gateway, channel: &str) -> u64 {
    let stats = api_get(gw.addr(), &format!("/api/presence/{channel}/stats"))
        .await
        .json();
    stats["users"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_room_is_reported_occupied_its_members_and_events_then_vacated() {
    let backend = Backend::start().await;
    backend.state(json!({"webhook_secret": SECRET})).await;
    let dir = TempDir::new("webhooks");
    let gw = node(&backend, None, &dir).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob = Client::connect(gw.addr(), &token("bob")).await;
    alice.subscribe("live:a").await;
    bob.subscribe("live:a").await;
    // A second connection of a member is no event; a channel outside the namespace neither.
    let mut alice2 = Client::connect(gw.addr(), &token("alice")).await;
    alice2.subscribe("live:a").await;
    alice2.subscribe("room:quiet").await;
    bob.publish("live:a", json!({"text": "hi"})).await;
    alice
        .request_ok("unsubscribe", json!({"channel": "live:a"}))
        .await;
    alice2
        .request_ok("unsubscribe", json!({"channel": "live:a"}))
        .await;
    bob.request_ok("unsubscribe", json!({"channel": "live:a"}))
        .await;
    expect_events(
        &backend,
        &[
            "channel_occupied live:a",
            "member_added live:a alice",
            "member_added live:a bob",
            "client_event live:a bob",
            "member_removed live:a alice",
            "member_removed live:a bob",
            "channel_vacated live:a",
        ],
    )
    .await;
    let events = backend.webhook_events().await;
    assert_eq!(events[3]["data"], r#"{"text":"hi"}"#);
    assert_eq!(events[3]["event"], "publish");
    assert_signed_and_unique(&backend).await;
    let health = api_get(gw.addr(), "/api/proxies").await.json();
    assert_eq!(health["webhook"]["leader"], true, "{health}");
    assert_eq!(health["webhook"]["delivered"], 7, "{health}");
}

#[tokio::test]
async fn three_nodes_send_each_event_once_in_order_after_the_backend_was_down() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.state(json!({"webhook_secret": SECRET})).await;
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new("webhooks")).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(node(&backend, Some(&redis), dir).await);
    }
    let mut alice = Client::connect(nodes[0].addr(), &token("alice")).await;
    let mut bob = Client::connect(nodes[1].addr(), &token("bob")).await;
    let mut carol = Client::connect(nodes[2].addr(), &token("carol")).await;
    alice.subscribe("live:a").await;
    bob.subscribe("live:a").await;
    carol.subscribe("live:a").await;
    carol.publish("live:a", json!({"n": 1})).await;
    let before = [
        "channel_occupied live:a",
        "member_added live:a alice",
        "member_added live:a bob",
        "member_added live:a carol",
        "client_event live:a carol",
    ];
    expect_events(&backend, &before).await;

    // The backend goes down; what happens meanwhile waits in the feed, in order.
    backend.down().await;
    alice
        .request_ok("unsubscribe", json!({"channel": "live:a"}))
        .await;
    bob.close().await;
    eventually("bob's leaving is recorded", secs(10), async || {
        users_present(&nodes[0], "live:a").await == 1
    })
    .await;
    carol
        .request_ok("unsubscribe", json!({"channel": "live:a"}))
        .await;
    // Down while the leader fails seven times in a row (backoff from 250 ms doubling to 5 s,
    // half of each random: about ten seconds), keeping the batch and what came after it.
    eventually(
        "the sender retries while the backend is down",
        secs(60),
        async || {
            let mut failed = 0.0;
            for gw in &nodes {
                failed += metric(
                    gw.addr(),
                    "gateway_webhook_requests_total{result=\"failed\"}",
                )
                .await
                .unwrap_or(0.0);
            }
            failed >= 7.0
        },
    )
    .await;
    backend.up().await;
    let mut all: Vec<&str> = before.to_vec();
    all.extend([
        "member_removed live:a alice",
        "member_removed live:a bob",
        "member_removed live:a carol",
        "channel_vacated live:a",
    ]);
    expect_events(&backend, &all).await;

    // A later event arrives after them all, and nothing was sent twice meanwhile.
    let mut dave = Client::connect(nodes[2].addr(), &token("dave")).await;
    dave.subscribe("live:b").await;
    all.extend(["channel_occupied live:b", "member_added live:b dave"]);
    expect_events(&backend, &all).await;
    assert_signed_and_unique(&backend).await;
    // One node sent them all.
    let mut leaders = 0;
    for gw in &nodes {
        let health = api_get(gw.addr(), "/api/proxies").await.json();
        if health["webhook"]["leader"] == true {
            leaders += 1;
            assert_eq!(health["webhook"]["delivered"], all.len(), "{health}");
        }
    }
    assert_eq!(leaders, 1);
}

/// Whether `gw` sends the webhooks now.
async fn leads(gw: &Gateway) -> bool {
    api_get(gw.addr(), "/api/proxies").await.json()["webhook"]["leader"] == true
}

#[tokio::test]
async fn when_the_leader_dies_another_node_reports_its_members_gone() {
    let redis = Redis::start().await;
    let backend = Backend::start().await;
    backend.state(json!({"webhook_secret": SECRET})).await;
    let dirs: Vec<TempDir> = (0..2).map(|_| TempDir::new("webhooks")).collect();
    let mut nodes = vec![
        node(&backend, Some(&redis), &dirs[0]).await,
        node(&backend, Some(&redis), &dirs[1]).await,
    ];
    let mut leader = None;
    eventually("a node leads the webhooks", secs(20), async || {
        for (i, gw) in nodes.iter().enumerate() {
            if leads(gw).await {
                leader = Some(i);
            }
        }
        leader.is_some()
    })
    .await;
    // The leader dies, with a member on it.
    let mut doomed = nodes.remove(leader.unwrap());
    let survivor = nodes.remove(0);
    let mut erin = Client::connect(doomed.addr(), &token("erin")).await;
    erin.subscribe("live:d").await;
    expect_events(
        &backend,
        &["channel_occupied live:d", "member_added live:d erin"],
    )
    .await;
    doomed.send_signal("KILL");
    doomed.wait_exit(secs(10)).await;
    // The survivor's heartbeat finds the dead node's entries expired, and removes them; once
    // the dead leader's lease ran out, the survivor leads and sends.
    expect_events(
        &backend,
        &[
            "channel_occupied live:d",
            "member_added live:d erin",
            "member_removed live:d erin",
            "channel_vacated live:d",
        ],
    )
    .await;
    assert_signed_and_unique(&backend).await;
    let health = api_get(survivor.addr(), "/api/proxies").await.json();
    assert_eq!(health["webhook"]["leader"], true, "{health}");
}

#[tokio::test]
async fn a_webhook_url_that_redirects_is_not_followed() {
    let backend = Backend::start().await;
    backend.state(json!({"webhook_secret": SECRET})).await;
    backend.mode("redirect", 0).await;
    let dir = TempDir::new("webhooks");
    let gw = node(&backend, None, &dir).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    alice.subscribe("live:r").await;
    eventually("the redirected requests fail", secs(20), async || {
        metric(
            gw.addr(),
            "gateway_webhook_requests_total{result=\"failed\"}",
        )
        .await
        .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    let health = api_get(gw.addr(), "/api/proxies").await.json();
    assert_eq!(health["webhook"]["state"], "retrying", "{health}");
    assert!(
        health["webhook"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("302")),
        "{health}"
    );
    // Nothing reached the redirect's target, and the events wait: once the URL answers,
    // they arrive, in order.
    backend.mode("normal", 0).await;
    expect_events(
        &backend,
        &["channel_occupied live:r", "member_added live:r alice"],
    )
    .await;
    backend.assert_no_redirect_followed().await;
    assert_signed_and_unique(&backend).await;
}
