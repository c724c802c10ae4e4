//! Commands and pushes, in both encodings.

use e2e::{Client, Encoding, Gateway, Token, as_str, as_u64, error_code, secs, token};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn connect(addr: &str, user: &str, enc: Encoding) -> Client {
    let t = Token::new(user).name(&user.to_uppercase()).hs256();
    match enc {
        Encoding::Json => Client::connect(addr, &t).await,
        Encoding::MsgPack => Client::connect_msgpack(addr, &t).await,
    }
}

fn check_message(m: &Value, channel: &str, offset: u64, epoch: &Value, from: &str, data: &Value) {
    assert_eq!(m["op"], "message", "{m}");
    assert!(m.get("id").is_none(), "a push carries no id: {m}");
    assert_eq!(m["channel"], channel, "{m}");
    assert_eq!(as_u64(&m["offset"]), offset, "{m}");
    assert_eq!(&m["epoch"], epoch, "{m}");
    assert_eq!(m["from"], from, "{m}");
    assert_eq!(&m["data"], data, "{m}");
    let ts = m["ts"]
        .as_i64()
        .unwrap_or_else(|| panic!("ts must be an integer: {m}"));
    assert!(
        (ts - now_ms()).abs() < 300_000,
        "ts must be the acceptance time in Unix ms: {m}"
    );
}

async fn publish_and_receive(enc: Encoding) {
    let gw = Gateway::start(&[]).await;
    let mut alice = connect(gw.addr(), "alice", enc).await;
    let mut bob = connect(gw.addr(), "bob", enc).await;
    let sub = alice.subscribe("room:c1").await;
    assert_eq!(as_u64(&sub["offset"]), 0, "fresh channel: {sub}");
    let epoch = sub["epoch"].clone();
    assert!(!as_str(&epoch).is_empty(), "{sub}");
    assert!(sub["recovered"].is_boolean(), "{sub}");
    let sub_b = bob.subscribe("room:c1").await;
    assert_eq!(sub_b["epoch"], epoch);

    let payloads = [
        json!({"text": "hello", "n": 1, "list": [1, "two", null, true], "f": 1.5}),
        json!(42),
        json!("a string"),
    ];
    for (i, data) in payloads.iter().enumerate() {
        let off = alice.publish("room:c1", data.clone()).await;
        assert_eq!(off, i as u64 + 1, "acks count from 1");
    }
    for (i, data) in payloads.iter().enumerate() {
        let m = alice.expect_message("room:c1", secs(10)).await;
        check_message(&m, "room:c1", i as u64 + 1, &epoch, "alice", data);
        let m = bob.expect_message("room:c1", secs(10)).await;
        check_message(&m, "room:c1", i as u64 + 1, &epoch, "alice", data);
    }
    let again = bob.subscribe("room:c1").await;
    assert_eq!(as_u64(&again["offset"]), 3, "latest offset: {again}");
}

#[tokio::test]
async fn publish_and_receive_json() {
    publish_and_receive(Encoding::Json).await;
}

#[tokio::test]
async fn publish_and_receive_msgpack() {
    publish_and_receive(Encoding::MsgPack).await;
}

#[tokio::test]
async fn json_and_msgpack_clients_share_channels() {
    let gw = Gateway::start(&[]).await;
    let mut j = connect(gw.addr(), "jay", Encoding::Json).await;
    let mut m = connect(gw.addr(), "em", Encoding::MsgPack).await;
    assert_eq!(j.encoding(), Encoding::Json);
    assert_eq!(m.encoding(), Encoding::MsgPack);
    j.subscribe("room:mix").await;
    m.subscribe("room:mix").await;
    let d1 = json!({"text": "from json", "nested": [1, 2, {"a": null, "b": -7}], "f": 2.25});
    let d2 = json!({"text": "from msgpack", "nested": {"k": [true, false]}, "big": 1_u64 << 40});
    assert_eq!(j.publish("room:mix", d1.clone()).await, 1);
    assert_eq!(m.publish("room:mix", d2.clone()).await, 2);
    for (off, from, data) in [(1, "jay", &d1), (2, "em", &d2)] {
        let at_j = j.expect_message("room:mix", secs(10)).await;
        let at_m = m.expect_message("room:mix", secs(10)).await;
        assert_eq!(at_j, at_m, "both encodings must carry the same structure");
        assert_eq!(as_u64(&at_j["offset"]), off);
        assert_eq!(at_j["from"], from);
        assert_eq!(&at_j["data"], data);
    }
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let gw = Gateway::start(&[]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob = Client::connect(gw.addr(), &token("bob")).await;
    alice.subscribe("room:u").await;
    bob.publish("room:u", json!(1)).await;
    alice.expect_message("room:u", secs(10)).await;
    assert_eq!(
        alice
            .request_ok("unsubscribe", json!({"channel": "room:u"}))
            .await,
        json!({})
    );
    bob.publish("room:u", json!(2)).await;
    // A marker on alice's personal channel, published after the message she must not get.
    bob.publish("user:alice", json!("marker")).await;
    let got = alice.expect_message("user:alice", secs(10)).await;
    assert_eq!(got["data"], "marker");
    assert_eq!(got["from"], "bob");
    // Messages of different channels need not keep their order across Redis: any message
    // within 3 s more would show (next_push_of returns every message push).
    let stray = alice.next_push_of("message", secs(3)).await;
    assert!(stray.is_none(), "message after unsubscribe: {stray:?}");
    assert_eq!(
        alice
            .request_err("unsubscribe", json!({"channel": "room:u"}))
            .await,
        "not_subscribed"
    );
    assert_eq!(
        alice
            .request_err("unsubscribe", json!({"channel": "room:never"}))
            .await,
        "not_subscribed"
    );
}

#[tokio::test]
async fn ping_and_unknown_op() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let r = c.request("ping", json!({})).await;
    assert_eq!(r, json!({"id": 1, "ok": {}}), "ping reply");
    let id = c.send("fly", json!({"channel": "room:x"})).await;
    let r = c.wait_reply(id, secs(10)).await;
    assert_eq!(as_u64(&r["id"]), id as u64, "{r}");
    assert_eq!(error_code(&r), Some("bad_request"), "{r}");
    assert!(r["error"]["message"].is_string(), "{r}");
    assert!(r.get("ok").is_none(), "exactly one of ok/error: {r}");
    // Missing required fields.
    assert_eq!(c.request_err("subscribe", json!({})).await, "bad_request");
    assert_eq!(
        c.request_err("publish", json!({"data": 1})).await,
        "bad_request"
    );
    assert_eq!(
        c.request_err("subscribe", json!({"channel": 5})).await,
        "bad_request"
    );
    c.request_ok("ping", json!({})).await;
}

#[tokio::test]
async fn bad_channel_names() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let long = format!("room:{}", "a".repeat(124));
    assert_eq!(long.len(), 129);
    for name in [
        "",
        long.as_str(),
        "room:a b",
        "room:é",
        "room:a/b",
        "room:a*",
    ] {
        assert_eq!(
            c.request_err("subscribe", json!({"channel": name})).await,
            "bad_request",
            "subscribe {name:?}"
        );
        assert_eq!(
            c.request_err("publish", json!({"channel": name, "data": 1}))
                .await,
            "bad_request",
            "publish {name:?}"
        );
    }
    let max = format!("room:{}", "a".repeat(123));
    assert_eq!(max.len(), 128);
    c.subscribe(&max).await;
    c.subscribe("room:A-z_0.9:x@y").await;
}

#[tokio::test]
async fn malformed_json_frames_get_id_0() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for raw in [
        "not json",
        "[1,2]",
        r#"{"op":"ping"}"#,
        r#"{"id":"x","op":"ping"}"#,
        r#"{"id":1.5,"op":"ping"}"#,
    ] {
        c.send_raw_text(raw).await;
        let r = c.wait_reply(0, secs(10)).await;
        assert_eq!(r["id"], 0, "{raw}: {r}");
        assert_eq!(error_code(&r), Some("bad_request"), "{raw}: {r}");
    }
    c.request_ok("ping", json!({})).await;
}

#[tokio::test]
async fn malformed_msgpack_frames_get_id_0() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect_msgpack(gw.addr(), &token("alice")).await;
    c.send_raw_text(r#"{"id":5,"op":"ping"}"#).await;
    let r = c.wait_reply(0, secs(10)).await;
    assert_eq!(
        error_code(&r),
        Some("bad_request"),
        "text frame on msgpack: {r}"
    );
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xc1],
        rmp_serde::to_vec(&json!([1, 2])).unwrap(),
        rmp_serde::to_vec_named(&json!({"op": "ping"})).unwrap(),
    ];
    for g in garbage {
        c.send_raw_binary(g.clone()).await;
        let r = c.wait_reply(0, secs(10)).await;
        assert_eq!(error_code(&r), Some("bad_request"), "{g:?}: {r}");
    }
    c.request_ok("ping", json!({})).await;
}

#[tokio::test]
async fn history_op() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    let empty = c.request_ok("history", json!({"channel": "room:h"})).await;
    assert_eq!(empty["messages"], json!([]), "{empty}");
    assert_eq!(as_u64(&empty["offset"]), 0, "{empty}");
    for i in 1..=5 {
        c.publish("room:h", json!({ "i": i })).await;
    }
    let offsets = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("messages must be an array: {v}"))
            .iter()
            .map(|m| as_u64(&m["offset"]))
            .collect()
    };
    let all = c.request_ok("history", json!({"channel": "room:h"})).await;
    assert_eq!(offsets(&all), vec![1, 2, 3, 4, 5], "{all}");
    assert_eq!(as_u64(&all["offset"]), 5);
    let epoch = all["epoch"].clone();
    assert!(epoch.is_string(), "{all}");
    for (i, m) in all["messages"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m["channel"], "room:h", "{m}");
        assert_eq!(m["data"], json!({ "i": i + 1 }), "{m}");
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["epoch"], epoch, "{m}");
        assert!(m["ts"].is_i64() || m["ts"].is_u64(), "{m}");
    }
    let since = c
        .request_ok("history", json!({"channel": "room:h", "since": 3}))
        .await;
    assert_eq!(offsets(&since), vec![4, 5], "since is exclusive: {since}");
    let newest = c
        .request_ok("history", json!({"channel": "room:h", "limit": 2}))
        .await;
    assert_eq!(
        offsets(&newest),
        vec![4, 5],
        "without since: newest `limit`, oldest first"
    );
    let first = c
        .request_ok(
            "history",
            json!({"channel": "room:h", "since": 1, "limit": 2}),
        )
        .await;
    assert_eq!(
        offsets(&first),
        vec![2, 3],
        "with since: first `limit` after it"
    );
    c.request_ok("history", json!({"channel": "room:h", "limit": 1000}))
        .await;
    assert_eq!(
        c.request_err("history", json!({"channel": "room:h", "limit": 1001}))
            .await,
        "bad_request"
    );
    assert_eq!(
        c.request_err("history", json!({"channel": "secret:h"}))
            .await,
        "forbidden",
        "history needs the right to subscribe"
    );
}

#[tokio::test]
async fn presence_op_lists_members() {
    let gw = Gateway::start(&[]).await;
    let alice_t = Token::new("alice").name("Alice").hs256();
    let mut a1 = Client::connect(gw.addr(), &alice_t).await;
    let mut a2 = Client::connect(gw.addr(), &alice_t).await;
    let mut b = Client::connect(gw.addr(), &Token::new("bob").name("Bob").hs256()).await;
    a1.subscribe("room:p").await;
    a2.subscribe("room:p").await;
    b.subscribe("room:p").await;
    let p = b.request_ok("presence", json!({"channel": "room:p"})).await;
    let mut members: Vec<Value> = p["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {p}"))
        .clone();
    members.sort_by_key(|m| m["user"].as_str().unwrap_or_default().to_string());
    assert_eq!(members.len(), 2, "{p}");
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["name"], "Alice");
    assert_eq!(as_u64(&members[0]["conns"]), 2, "{p}");
    assert_eq!(members[1]["user"], "bob");
    assert_eq!(members[1]["name"], "Bob");
    assert_eq!(as_u64(&members[1]["conns"]), 1, "{p}");
    assert_eq!(
        b.request_err("presence", json!({"channel": "user:bob"}))
            .await,
        "bad_request",
        "presence on a namespace without presence"
    );
}

#[tokio::test]
async fn direct_messages_to_personal_channels() {
    let gw = Gateway::start(&[]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob = Client::connect(gw.addr(), &token("bob")).await;
    let off = alice.publish("user:bob", json!({"text": "psst"})).await;
    assert!(off >= 1);
    let m = bob.expect_message("user:bob", secs(10)).await;
    assert_eq!(m["from"], "alice", "{m}");
    assert_eq!(m["data"], json!({"text": "psst"}), "{m}");
    assert_eq!(as_u64(&m["offset"]), off, "{m}");
    assert_eq!(
        bob.request_err("subscribe", json!({"channel": "user:alice"}))
            .await,
        "forbidden"
    );
    // Own channel: subscribing again is allowed.
    bob.subscribe("user:bob").await;
    // A channels claim does not open other users' personal channels.
    let mut eve = Client::connect(
        gw.addr(),
        &Token::new("eve").channels(&["user:*", "*"]).hs256(),
    )
    .await;
    assert_eq!(
        eve.request_err("subscribe", json!({"channel": "user:alice"}))
            .await,
        "forbidden"
    );
}

#[tokio::test]
async fn personal_channel_reaches_every_connection_of_the_user_until_unsubscribed() {
    let gw = Gateway::start(&[]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let mut bob_phone = Client::connect(gw.addr(), &token("bob")).await;
    let mut bob_laptop = Client::connect(gw.addr(), &token("bob")).await;
    let first = alice.publish("user:bob", json!("one")).await;
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let m = bob.expect_message("user:bob", secs(10)).await;
        assert_eq!(as_u64(&m["offset"]), first, "{m}");
    }
    // The laptop leaves its personal channel: only the phone gets the next one.
    bob_laptop
        .request_ok("unsubscribe", json!({"channel": "user:bob"}))
        .await;
    let second = alice.publish("user:bob", json!("two")).await;
    let m = bob_phone.expect_message("user:bob", secs(10)).await;
    assert_eq!(as_u64(&m["offset"]), second, "{m}");
    // A marker on another channel proves the laptop got nothing in between.
    bob_laptop.subscribe("room:marker").await;
    alice.publish("room:marker", json!("m")).await;
    let next = bob_laptop
        .next_push_of("message", secs(10))
        .await
        .expect("marker");
    assert_eq!(next["channel"], "room:marker", "{next}");
    // Subscribing again (with recovery) brings back what it missed.
    let reply = bob_laptop
        .request_ok(
            "subscribe",
            json!({"channel": "user:bob", "since": first, "epoch": m["epoch"]}),
        )
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let m = bob_laptop.expect_message("user:bob", secs(10)).await;
    assert_eq!(as_u64(&m["offset"]), second, "{m}");
}

#[tokio::test]
async fn direct_messages_can_be_disabled() {
    let gw = Gateway::start(&["--direct-messages", "false"]).await;
    let mut alice = Client::connect(gw.addr(), &token("alice")).await;
    let _bob = Client::connect(gw.addr(), &token("bob")).await;
    assert_eq!(
        alice
            .request_err("publish", json!({"channel": "user:bob", "data": 1}))
            .await,
        "forbidden"
    );
    alice.publish("room:ok", json!(1)).await;
}

#[tokio::test]
async fn token_channels_grant_access() {
    let gw = Gateway::start(&[]).await;
    let mut plain = Client::connect(gw.addr(), &token("alice")).await;
    assert_eq!(
        plain
            .request_err("subscribe", json!({"channel": "secret:x"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        plain
            .request_err("publish", json!({"channel": "secret:x", "data": 1}))
            .await,
        "forbidden"
    );
    let mut granted = Client::connect(
        gw.addr(),
        &Token::new("carol").channels(&["secret:*"]).hs256(),
    )
    .await;
    granted.subscribe("secret:x").await;
    let off = granted.publish("secret:x", json!("hi")).await;
    assert_eq!(off, 1);
    let m = granted.expect_message("secret:x", secs(10)).await;
    assert_eq!(m["data"], "hi");
    assert_eq!(
        granted
            .request_err("subscribe", json!({"channel": "other:x"}))
            .await,
        "forbidden",
        "the pattern only grants what it matches"
    );
}

#[tokio::test]
async fn msgpack_bin_data_is_refused() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect_msgpack(gw.addr(), &token("alice")).await;
    // {"id": 7, "op": "publish", "channel": "room:b", "data": bin8[1,2,3]}
    let mut frame = vec![0x84];
    for (k, v) in [
        ("id", vec![0x07]),
        ("op", [vec![0xa7], b"publish".to_vec()].concat()),
        ("channel", [vec![0xa6], b"room:b".to_vec()].concat()),
        ("data", vec![0xc4, 0x03, 1, 2, 3]),
    ] {
        frame.push(0xa0 | k.len() as u8);
        frame.extend_from_slice(k.as_bytes());
        frame.extend_from_slice(&v);
    }
    c.send_raw_binary(frame).await;
    // The ping's reply comes after the publish's, whatever id that one carries.
    c.request_ok("ping", json!({})).await;
    let with_id = c.take_reply(7);
    let with_0 = c.take_reply(0);
    let r = with_id
        .clone()
        .or(with_0.clone())
        .unwrap_or_else(|| panic!("no reply to a publish with MessagePack bin data"));
    assert_eq!(error_code(&r), Some("bad_request"), "{r}");
    assert!(
        with_id.is_some(),
        "the frame has an integer id, so the reply must echo it (got only an id-0 reply: {r})"
    );
}
