//! Handshake authentication and subprotocol negotiation.

use e2e::{
    Client, Connect, Encoding, Gateway, KeyKind, KeyPair, TEST_SECRET, Token, as_str, as_u64, http,
    token,
};
use jsonwebtoken::Algorithm;
use serde_json::json;

#[tokio::test]
async fn welcome_with_query_token() {
    let gw = Gateway::start(&["--node-id", "node-e2e"]).await;
    let c = Connect::new(gw.addr())
        .token(&Token::new("alice").name("Alice").hs256())
        .connect()
        .await;
    let w = &c.welcome;
    assert_eq!(w["op"], "welcome", "{w}");
    assert_eq!(w["user"], "alice", "{w}");
    assert_eq!(w["node"], "node-e2e", "{w}");
    assert!(!as_str(&w["session"]).is_empty(), "{w}");
    assert_eq!(
        as_u64(&w["ping_interval"]),
        25,
        "default ping interval: {w}"
    );
    assert!(w.get("id").is_none(), "a push carries no id: {w}");
    assert_eq!(c.encoding(), Encoding::Json);
}

#[tokio::test]
async fn welcome_with_bearer_header_and_distinct_sessions() {
    let gw = Gateway::start(&["--ping-interval-secs", "7"]).await;
    let a = Connect::new(gw.addr())
        .bearer(&token("bob"))
        .connect()
        .await;
    let b = Connect::new(gw.addr())
        .bearer(&token("bob"))
        .connect()
        .await;
    assert_eq!(a.welcome["user"], "bob");
    assert_eq!(as_u64(&a.welcome["ping_interval"]), 7, "{}", a.welcome);
    assert_ne!(
        a.welcome["session"], b.welcome["session"],
        "two connections must get different sessions"
    );
}

#[tokio::test]
async fn missing_and_malformed_tokens_are_401() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(
        Connect::new(gw.addr()).expect_status().await,
        401,
        "no token"
    );
    for garbage in ["not-a-jwt", "aaaa.bbbb.cccc", "..", "eyJhbGciOiJIUzI1NiJ9"] {
        assert_eq!(
            Connect::new(gw.addr()).token(garbage).expect_status().await,
            401,
            "token {garbage:?}"
        );
    }
    assert_eq!(
        Connect::new(gw.addr())
            .bearer("not-a-jwt")
            .expect_status()
            .await,
        401,
        "garbage bearer token"
    );
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let gw = Gateway::start(&[]).await;
    let long_sub = "u".repeat(129);
    let cases: Vec<(&str, String)> = vec![
        ("bad signature", Token::new("alice").bad_signature()),
        ("alg none", Token::new("alice").alg_none()),
        (
            "HS384 when HS256 is configured",
            Token::new("alice").hmac(Algorithm::HS384, TEST_SECRET.as_bytes()),
        ),
        (
            "HS512 when HS256 is configured",
            Token::new("alice").hmac(Algorithm::HS512, TEST_SECRET.as_bytes()),
        ),
        ("expired", Token::new("alice").exp_in(-120).hs256()),
        ("nbf in the future", Token::new("alice").nbf_in(120).hs256()),
        ("missing sub", Token::new("alice").remove("sub").hs256()),
        ("empty sub", Token::new("").hs256()),
        ("sub over 128 bytes", Token::new(&long_sub).hs256()),
        (
            "sub with a control character",
            Token::new("al\u{1}ice").hs256(),
        ),
        ("missing exp", Token::new("alice").remove("exp").hs256()),
        (
            "channels pattern with an inner *",
            Token::new("alice").channels(&["a*b"]).hs256(),
        ),
    ];
    let mut wrong = Vec::new();
    for (label, t) in &cases {
        let q = Connect::new(gw.addr()).token(t).expect_status().await;
        let h = Connect::new(gw.addr()).bearer(t).expect_status().await;
        if (q, h) != (401, 401) {
            wrong.push(format!("{label}: query {q}, header {h}"));
        }
    }
    assert!(wrong.is_empty(), "expected 401 for each: {wrong:#?}");
    // The gateway is still fine, and 128-byte users and trailing-* patterns are accepted.
    let sub128 = "u".repeat(128);
    let c = Client::connect(gw.addr(), &token(&sub128)).await;
    assert_eq!(c.welcome["user"], sub128.as_str());
    let c = Client::connect(
        gw.addr(),
        &Token::new("alice").channels(&["secret:*"]).hs256(),
    )
    .await;
    assert_eq!(c.welcome["user"], "alice");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let gw = Gateway::start(&["--jwt-issuer", "iss-e2e", "--jwt-audience", "aud-e2e"]).await;
    let good = Token::new("alice").iss("iss-e2e").aud("aud-e2e");
    let c = Client::connect(gw.addr(), &good.hs256()).await;
    assert_eq!(c.welcome["user"], "alice");
    let cases = [
        ("wrong iss", good.clone().iss("other-iss")),
        ("wrong aud", good.clone().aud("other-aud")),
        ("missing iss", good.clone().remove("iss")),
        ("missing aud", good.clone().remove("aud")),
    ];
    let mut wrong = Vec::new();
    for (label, t) in cases {
        let status = Connect::new(gw.addr())
            .token(&t.hs256())
            .expect_status()
            .await;
        if status != 401 {
            wrong.push(format!("{label}: {status}"));
        }
    }
    assert!(wrong.is_empty(), "expected 401 for each: {wrong:#?}");
}

async fn asymmetric(kind: KeyKind) {
    let keys = KeyPair::generate(kind);
    let other = KeyPair::generate(kind);
    let path = keys.public_key_path().display().to_string();
    let gw = Gateway::builder()
        .without("--jwt-secret")
        .arg("--jwt-alg", keys.alg_flag())
        .arg("--jwt-public-key-file", &path)
        .start()
        .await;
    let c = Client::connect(gw.addr(), &Token::new("alice").sign_with(&keys)).await;
    assert_eq!(c.welcome["user"], "alice");
    let c = Connect::new(gw.addr())
        .bearer(&Token::new("bob").sign_with(&keys))
        .connect()
        .await;
    assert_eq!(c.welcome["user"], "bob");

    let cases: Vec<(&str, String)> = vec![
        ("HS256 with the test secret", Token::new("alice").hs256()),
        (
            "HS256 keyed with the public key (alg confusion)",
            Token::new("alice").hmac(Algorithm::HS256, keys.public_pem()),
        ),
        (
            "signed by another key pair",
            Token::new("alice").sign_with(&other),
        ),
        ("alg none", Token::new("alice").alg_none()),
        ("expired", Token::new("alice").exp_in(-120).sign_with(&keys)),
    ];
    let mut wrong = Vec::new();
    for (label, t) in &cases {
        let status = Connect::new(gw.addr()).token(t).expect_status().await;
        if status != 401 {
            wrong.push(format!("{label}: {status}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} node, expected 401 for each: {wrong:#?}",
        keys.alg_flag()
    );
}

#[tokio::test]
async fn rs256_tokens() {
    asymmetric(KeyKind::Rsa).await;
}

#[tokio::test]
async fn eddsa_tokens() {
    asymmetric(KeyKind::Ed25519).await;
}

#[tokio::test]
async fn eddsa_node_refuses_rs256_token() {
    let ed = KeyPair::generate(KeyKind::Ed25519);
    let rsa = KeyPair::generate(KeyKind::Rsa);
    let gw = Gateway::builder()
        .without("--jwt-secret")
        .arg("--jwt-alg", "EdDSA")
        .arg(
            "--jwt-public-key-file",
            ed.public_key_path().display().to_string(),
        )
        .start()
        .await;
    assert_eq!(
        Connect::new(gw.addr())
            .token(&Token::new("alice").sign_with(&rsa))
            .expect_status()
            .await,
        401
    );
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let mut gw = Gateway::builder()
        .arg("--log", "debug")
        .arg("--jwt-leeway-secs", "0")
        .start()
        .await;
    let query_token = Token::new("alice").name("Alice").hs256();
    let header_token = Token::new("bob").hs256();
    let bad_token = Token::new("mallory").bad_signature();
    let expired_token = Token::new("carol").exp_in(-3600).hs256();
    let refresh_token = Token::new("alice").exp_in(7200).hs256();
    let route_token = Token::new("dave").hs256();

    let mut a = Client::connect(gw.addr(), &query_token).await;
    let mut b = Connect::new(gw.addr())
        .bearer(&header_token)
        .connect()
        .await;
    assert_eq!(
        Connect::new(gw.addr())
            .token(&bad_token)
            .expect_status()
            .await,
        401
    );
    assert_eq!(
        Connect::new(gw.addr())
            .bearer(&expired_token)
            .expect_status()
            .await,
        401
    );
    a.request_ok("refresh", json!({ "token": refresh_token }))
        .await;
    assert_eq!(
        a.request_err("refresh", json!({ "token": bad_token }))
            .await,
        "unauthorized"
    );
    let r = http(
        gw.addr(),
        "GET",
        &format!("/v1/route?token={route_token}"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    b.request_ok("ping", json!({})).await;
    a.close().await;
    b.close().await;
    // Everything it will ever log about these connections, to the last line.
    let logs = gw.stop_and_logs().await;
    assert!(!logs.is_empty(), "the gateway logged nothing at all");
    for t in [
        &query_token,
        &header_token,
        &bad_token,
        &expired_token,
        &refresh_token,
        &route_token,
    ] {
        let signature = t.rsplit('.').next().unwrap();
        for line in &logs {
            assert!(
                !line.contains(t.as_str()) && !line.contains(signature),
                "a token (or its signature) was written to the log: {line}"
            );
        }
    }
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let gw = Gateway::start(&[]).await;
    let t = token("alice");
    for offered in ["foo", "foo, bar", "v2.json"] {
        assert_eq!(
            Connect::new(gw.addr())
                .token(&t)
                .protocol(offered)
                .expect_status()
                .await,
            400,
            "offering only {offered:?}"
        );
    }

    let mut m = Connect::new(gw.addr())
        .token(&t)
        .protocol("v1.msgpack")
        .connect()
        .await;
    assert_eq!(m.protocol(), Some("v1.msgpack"));
    assert_eq!(m.encoding(), Encoding::MsgPack);
    assert_eq!(m.welcome["user"], "alice");
    assert_eq!(m.request_ok("ping", json!({})).await, json!({}));

    let j = Connect::new(gw.addr())
        .token(&t)
        .protocol("v1.json")
        .connect()
        .await;
    assert_eq!(j.protocol(), Some("v1.json"));

    let m2 = Connect::new(gw.addr())
        .token(&t)
        .protocol("foo, v1.msgpack")
        .connect()
        .await;
    assert_eq!(
        m2.protocol(),
        Some("v1.msgpack"),
        "the one known protocol among unknown ones is chosen"
    );

    // No subprotocol offered: JSON, and (as RFC 6455 requires) none echoed; tungstenite refuses
    // the handshake if the server names one anyway.
    let mut d = Connect::new(gw.addr()).token(&t).connect().await;
    assert_eq!(d.protocol(), None);
    assert_eq!(d.encoding(), Encoding::Json);
    assert_eq!(d.request_ok("ping", json!({})).await, json!({}));
}
