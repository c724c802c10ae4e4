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
    let none = alice2.next_push(secs(3)).await;
    assert!(none.is_none(), "{none:?}");
    // The channel works: alice2 is subscribed and hears messages on it.
    bob.request_ok("refresh", json!({"token": quiet("bob")}))
        .await;
    bob.publish("quiet:z", json!("hi")).await;
    alice2.expect_message("quiet:z", secs(5)).await;
}

/// Connects `users` concurrently (chunks of 100), each subscribed to `channel` with
/// `join_leave`.
async fn members(addr: &str, users: &[String], channel: &str, join_leave: Value) -> Vec<Client> {
    let mut all = Vec::with_capacity(users.len());
    for chunk in users.chunks(100) {
        let joined = futures_util::future::join_all(chunk.iter().map(|user| {
            let join_leave = join_leave.clone();
            async move {
                let mut c = Client::connect(addr, &tok(user)).await;
                c.request_ok(
                    "subscribe",
                    json!({"channel": channel, "join_leave": join_leave}),
                )
                .await;
                c
            }
        }))
        .await;
        all.extend(joined);
    }
    all
}

/// The `joins` and `leaves` of a `presence_diff`, sorted.
fn diff_users(p: &Value) -> (Vec<String>, Vec<String>) {
    assert_eq!(
        p["op"], "presence_diff",
        "only presence diffs expected, got {p}"
    );
    let list = |k: &str| {
        let mut v: Vec<String> = p[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} missing in {p}"))
            .iter()
            .map(|u| u.as_str().expect("user ids are strings").to_owned())
            .collect();
        v.sort();
        v
    };
    (list("joins"), list("leaves"))
}

#[tokio::test]
async fn a_big_room_gets_one_diff_per_interval_with_exactly_the_changes() {
    // A long interval, so that the 150 changes below surely fall within one.
    let gw = Gateway::start(&["--presence-diff-interval-ms", "3000"]).await;
    let addr = gw.addr();
    let ids = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:04}")).collect()
    };
    let mut room = members(addr, &ids("m", 1000), "room:big", json!("diff")).await;
    // A MessagePack member gets the same diffs.
    let mut packed = Client::connect_msgpack(addr, &tok("packed")).await;
    packed
        .request_ok(
            "subscribe",
            json!({"channel": "room:big", "join_leave": true}),
        )
        .await;
    let mut quiet = members(addr, &ids("quiet", 1), "room:big", json!(false)).await;
    let mut watch = members(addr, &ids("watch", 1), "room:big", json!("diff")).await;
    let mut each = members(addr, &ids("each", 1), "room:big", json!("each")).await;
    // Joiners connect now and subscribe later, within the interval under test.
    let joiners = ids("j", 100);
    let mut joining = Vec::new();
    for chunk in joiners.chunks(100) {
        joining.extend(
            futures_util::future::join_all(chunk.iter().map(|u| {
                let t = tok(u);
                async move { Client::connect(addr, &t).await }
            }))
            .await,
        );
    }

    // Filling the room overflowed diffs (over 200 changes an interval): let it settle.
    while let Some(p) = watch[0].next_push(millis(4000)).await {
        diff_users(&p);
    }
    // The marker's join arrives in a diff right after a flush: the next interval starts.
    let mut marker = Client::connect(addr, &tok("marker")).await;
    marker
        .request_ok(
            "subscribe",
            json!({"channel": "room:big", "join_leave": "off"}),
        )
        .await;
    loop {
        let p = watch[0]
            .next_push(secs(15))
            .await
            .expect("a diff with the marker's join");
        if diff_users(&p).0.contains(&"marker".to_string()) {
            break;
        }
    }

    // 100 join and 50 leave, all at once.
    let (leavers, stayers) = room.split_at_mut(50);
    let subscribes = joining.iter_mut().map(|c| async move {
        c.request_ok(
            "subscribe",
            json!({"channel": "room:big", "join_leave": "diff"}),
        )
        .await;
    });
    let unsubscribes = leavers.iter_mut().map(|c| async move {
        c.request_ok("unsubscribe", json!({"channel": "room:big"}))
            .await;
    });
    futures_util::future::join(
        futures_util::future::join_all(subscribes),
        futures_util::future::join_all(unsubscribes),
    )
    .await;
    let expected = (joiners.clone(), ids("m", 50));

    // Each remaining member: diffs up to the marker's, then exactly one with the 150 changes,
    // then nothing more.
    let interval = millis(3000);
    let checks = stayers
        .iter_mut()
        .chain(std::iter::once(&mut packed))
        .map(|c| {
            let expected = expected.clone();
            async move {
                let before_marker = |p: &Value| diff_users(p).0.contains(&"marker".to_string());
                loop {
                    let p = c
                        .next_push(secs(15))
                        .await
                        .unwrap_or_else(|| panic!("{}: no diff with the marker", c.user()));
                    if before_marker(&p) {
                        break;
                    }
                }
                let p = c
                    .next_push(interval * 3)
                    .await
                    .expect("the diff under test");
                assert_eq!(p["channel"], "room:big");
                assert_eq!(diff_users(&p), expected, "{} got {p}", c.user());
                assert!(p.get("overflow").is_none(), "{p}");
                let more = c.next_push(interval + millis(1000)).await;
                assert!(more.is_none(), "one diff per interval, then {more:?}");
            }
        });
    futures_util::future::join_all(checks).await;
    // Joiners subscribed after the marker's flush: their first diff is the same one.
    let checks = joining.iter_mut().map(|c| {
        let expected = expected.clone();
        async move {
            let p = c
                .next_push(interval * 3)
                .await
                .expect("the diff under test");
            assert_eq!(diff_users(&p), expected, "{} got {p}", c.user());
        }
    });
    futures_util::future::join_all(checks).await;
    // Those who left do not get the diff of the interval they left in.
    let checks = room.iter_mut().take(50).map(|c| async move {
        while let Some(p) = c.next_push(secs(3)).await {
            assert!(!diff_users(&p).0.contains(&"j0000".to_string()), "{p}");
        }
    });
    futures_util::future::join_all(checks).await;

    // `join_leave: false`: no presence push at all.
    assert_eq!(quiet[0].next_push(secs(3)).await, None);
    // `each`: the v1 pushes, one per change, the marker's join among them.
    let mut seen = Vec::new();
    while let Some(p) = each[0].next_push(millis(1500)).await {
        assert!(p["op"] == "join" || p["op"] == "leave", "{p}");
        seen.push((
            p["op"].as_str().unwrap().to_owned(),
            p["user"].as_str().unwrap().to_owned(),
        ));
    }
    let after_marker: Vec<_> = seen
        .iter()
        .skip_while(|(_, u)| u != "marker")
        .skip(1)
        .cloned()
        .collect();
    let mut joins: Vec<String> = after_marker
        .iter()
        .filter(|(o, _)| o == "join")
        .map(|(_, u)| u.clone())
        .collect();
    let mut leaves: Vec<String> = after_marker
        .iter()
        .filter(|(o, _)| o == "leave")
        .map(|(_, u)| u.clone())
        .collect();
    joins.sort();
    leaves.sort();
    assert_eq!((joins, leaves), expected);
}

#[tokio::test]
async fn a_join_and_leave_within_one_interval_is_not_announced() {
    let gw = Gateway::start(&["--presence-diff-interval-ms", "2000"]).await;
    let mut alice = Client::connect(gw.addr(), &tok("alice")).await;
    alice
        .request_ok(
            "subscribe",
            json!({"channel": "room:x", "join_leave": true}),
        )
        .await;
    let p = alice.next_push(secs(10)).await.expect("alice's own join");
    assert_eq!(diff_users(&p), (vec!["alice".to_string()], vec![]));
    let mut bob = Client::connect(gw.addr(), &tok("bob")).await;
    bob.request_ok(
        "subscribe",
        json!({"channel": "room:x", "join_leave": "off"}),
    )
    .await;
    bob.request_ok("unsubscribe", json!({"channel": "room:x"}))
        .await;
    let mut carol = Client::connect(gw.addr(), &tok("carol")).await;
    carol
        .request_ok(
            "subscribe",
            json!({"channel": "room:x", "join_leave": "off"}),
        )
        .await;
    let p = alice.next_push(secs(10)).await.expect("carol's join");
    assert_eq!(
        diff_users(&p),
        (vec!["carol".to_string()], vec![]),
        "bob came and went unseen"
    );
    // A re-sync may change the mode: alice now wants the v1 pushes.
    alice
        .request_ok(
            "subscribe",
            json!({"channel": "room:x", "join_leave": "each"}),
        )
        .await;
    carol.close().await;
    let p = alice.next_push(secs(10)).await.expect("carol's leave");
    assert_eq!(
        core(&p),
        json!({"op": "leave", "channel": "room:x", "user": "carol"})
    );
    assert_eq!(
        alice.next_push(secs(3)).await,
        None,
        "no diff beside the v1 push"
    );
}

#[tokio::test]
async fn presence_pages_list_every_member_once_and_stats_count_them() {
    let gw = Gateway::start(&[]).await;
    let addr = gw.addr();
    let users: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
    let mut room = members(addr, &users, "room:p", json!("off")).await;
    let mut second = Client::connect(addr, &tok("u03")).await;
    second.subscribe("room:p").await;

    let me = &mut room[0];
    let stats = me
        .request_ok("presence_stats", json!({"channel": "room:p"}))
        .await;
    assert_eq!(stats, json!({"users": 25, "conns": 26}));

    // Pages of 10; u07 leaves while the client pages: every member present throughout is
    // listed exactly once, in user-id order.
    let mut listed: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut fields = json!({"channel": "room:p", "limit": 10});
        if let Some(c) = &cursor {
            fields["cursor"] = json!(c);
        }
        let page = room[0].request_ok("presence", fields).await;
        pages += 1;
        let page_members = page["members"].as_array().expect("members").clone();
        assert!(page_members.len() <= 10, "{page}");
        listed.extend(
            page_members
                .iter()
                .map(|m| m["user"].as_str().unwrap().to_owned()),
        );
        if pages == 1 {
            room[7]
                .request_ok("unsubscribe", json!({"channel": "room:p"}))
                .await;
        }
        match page.get("cursor") {
            Some(c) => cursor = Some(c.as_str().expect("cursor is a string").to_owned()),
            None => break,
        }
    }
    let mut expected = users.clone();
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {listed:?}"
    );
    // u07 was on the first page (listed before it left).
    assert_eq!(listed, expected, "{listed:?}");
    assert_eq!(pages, 3);
    expected.retain(|u| u != "u07");

    // Without a limit: everyone, no cursor; the HTTP API answers the same.
    let all = room[0]
        .request_ok("presence", json!({"channel": "room:p"}))
        .await;
    let all_users: Vec<&str> = all["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(all_users, expected);
    assert!(all.get("cursor").is_none());
    let u03 = all["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "u03")
        .unwrap();
    assert_eq!(u03["conns"], 2);

    let r = e2e::api_get(addr, "/api/presence/room:p?limit=20").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["members"].as_array().unwrap().len(), 20);
    let cursor = body["cursor"]
        .as_str()
        .expect("a cursor after 20 of 24")
        .to_owned();
    let r = e2e::api_get(
        addr,
        &format!("/api/presence/room:p?limit=20&cursor={cursor}"),
    )
    .await;
    assert_eq!(r.json()["members"].as_array().unwrap().len(), 4);
    assert!(r.json().get("cursor").is_none());
    let r = e2e::api_get(addr, "/api/presence/room:p/stats").await;
    assert_eq!(r.json(), json!({"users": 24, "conns": 25}));
    e2e::assert_api_error(
        &e2e::api_get(addr, "/api/presence/room:p?limit=0").await,
        400,
        "bad_request",
    );

    // Bad pages and channels without presence.
    for bad in [
        json!({"channel": "room:p", "limit": 1001}),
        json!({"channel": "room:p", "cursor": 7}),
        json!({"channel": "user:u00"}),
    ] {
        assert_eq!(room[0].request_err("presence", bad).await, "bad_request");
    }
    assert_eq!(
        room[0]
            .request_err("presence_stats", json!({"channel": "user:u00"}))
            .await,
        "bad_request"
    );
    assert_eq!(
        room[0]
            .request_err(
                "subscribe",
                json!({"channel": "room:q", "join_leave": "loud"})
            )
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn a_namespace_can_default_to_diffs_and_a_crowded_interval_overflows() {
    let dir = e2e::TempDir::new("presence-ns");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[[namespaces]]\nprefix = \"stage:\"\nopen = true\npresence = true\njoin_leave = \"diff\"\n",
    )
    .unwrap();
    let gw = Gateway::start(&[
        "--config",
        &path.display().to_string(),
        "--presence-diff-interval-ms",
        "2000",
        "--presence-diff-max",
        "5",
    ])
    .await;
    // No `join_leave` on subscribe: the namespace's default, diffs.
    let mut watcher = Client::connect(gw.addr(), &tok("watcher")).await;
    watcher.subscribe("stage:a").await;
    let p = watcher
        .next_push(secs(10))
        .await
        .expect("watcher's own join");
    assert_eq!(diff_users(&p), (vec!["watcher".to_string()], vec![]));
    // Eight joins within one interval, over the limit of five: no lists, `overflow`.
    let users: Vec<String> = (0..8).map(|i| format!("crowd{i}")).collect();
    let _crowd = members(gw.addr(), &users, "stage:a", Value::Null).await;
    let p = watcher.next_push(secs(10)).await.expect("the crowded diff");
    assert_eq!(
        p,
        json!({"op": "presence_diff", "channel": "stage:a", "joins": [], "leaves": [],
            "overflow": true})
    );
    let stats = watcher
        .request_ok("presence_stats", json!({"channel": "stage:a"}))
        .await;
    assert_eq!(stats, json!({"users": 9, "conns": 9}));
}
