//! The TOML configuration file (`--config`).

use e2e::{Client, Gateway, TempDir, error_code, secs, token};
use serde_json::json;

#[tokio::test]
async fn config_file_limits_and_namespaces() {
    let dir = TempDir::new("config");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        r#"
max_subscriptions = 2

[[namespaces]]
prefix = "news:"
open = true
client_publish = false
presence = false
"#,
    )
    .unwrap();
    let gw = Gateway::start(&["--config", &path.display().to_string()]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;

    // An open namespace without client publishing.
    c.subscribe("news:x").await;
    let r = c
        .request("publish", json!({"channel": "news:x", "data": 1}))
        .await;
    assert_eq!(error_code(&r), Some("forbidden"), "{r}");
    assert_eq!(
        c.request_err("presence", json!({"channel": "news:x"}))
            .await,
        "bad_request",
        "presence is off in news:"
    );
    // The server may still publish there.
    let resp = e2e::api_post(
        gw.addr(),
        "/api/publish",
        json!({"channel": "news:x", "data": "headline"}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let m = c.expect_message("news:x", secs(10)).await;
    assert_eq!(m["data"], "headline");
    assert_eq!(m["from"], "server");

    // max_subscriptions = 2 (the personal channel does not count).
    c.subscribe("news:y").await;
    assert_eq!(
        c.request_err("subscribe", json!({"channel": "news:z"}))
            .await,
        "forbidden",
        "third subscription with max_subscriptions = 2"
    );

    // The file defines *more* namespaces (docs/protocol.md): the defaults still apply.
    let mut d = Client::connect(gw.addr(), &token("bob")).await;
    d.subscribe("room:one").await;
    d.publish("room:one", json!("x")).await;
    assert_eq!(
        d.request_err("subscribe", json!({"channel": "secret:x"}))
            .await,
        "forbidden"
    );
}

#[tokio::test]
async fn command_line_overrides_config_file() {
    let dir = TempDir::new("config");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, "max_subscriptions = 1\n").unwrap();
    let gw = Gateway::start(&[
        "--config",
        &path.display().to_string(),
        "--max-subscriptions",
        "3",
    ])
    .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    for ch in ["room:a", "room:b", "room:c"] {
        c.subscribe(ch).await;
    }
    assert_eq!(
        c.request_err("subscribe", json!({"channel": "room:d"}))
            .await,
        "forbidden"
    );
}

#[tokio::test]
async fn broken_config_file_fails_to_start() {
    let dir = TempDir::new("config");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, "max_subscriptions = \"lots\"\n[[[\n").unwrap();
    let (status, out) = Gateway::builder()
        .arg("--config", path.display().to_string())
        .run_to_exit(secs(15))
        .await;
    assert!(
        !status.success(),
        "started with a broken config file: {out}"
    );
}
