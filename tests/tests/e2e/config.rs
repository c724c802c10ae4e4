//! Configuration: the TOML file (`--config`), configuration errors, `--version`, dev mode's
//! API key, and log output.

use e2e::{Client, Gateway, TempDir, assert_config_error, error_code, http, secs, token};
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
    assert_config_error(&status, &out, &["gateway.toml"]);
}

#[tokio::test]
async fn an_unknown_delta_type_in_a_namespace_fails_to_start() {
    let dir = TempDir::new("config");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "[[namespaces]]\nprefix = \"doc:\"\nallowed_delta_types = [\"xdelta\"]\n",
    )
    .unwrap();
    let (status, out) = Gateway::builder()
        .arg("--config", path.display().to_string())
        .run_to_exit(secs(15))
        .await;
    assert_config_error(&status, &out, &["gateway.toml", "xdelta", "fossil"]);
}

#[tokio::test]
async fn configuration_errors_are_one_line_with_exit_code_2() {
    for args in [
        vec!["--jwt-alg", "nope"],
        vec!["--config", "/nonexistent/gateway.toml"],
        vec!["--allowed-origins", "app.example"],
    ] {
        let mut builder = Gateway::builder().env("RUST_BACKTRACE", "1");
        for pair in args.chunks(2) {
            builder = builder.arg(pair[0], pair[1]);
        }
        let (status, out) = builder.run_to_exit(secs(15)).await;
        assert_config_error(&status, &out, &[args[0].trim_start_matches('-')]);
    }
}

#[tokio::test]
async fn version_names_the_commit() {
    let (status, out) = Gateway::builder()
        .flag("--version")
        .run_to_exit(secs(15))
        .await;
    assert!(status.success(), "{out}");
    let commit = out
        .trim()
        .strip_prefix("gateway ")
        .and_then(|v| v.split_once(" ("))
        .and_then(|(_, c)| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`gateway <version> (<commit>)`: {out}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{out}"
    );
}

#[tokio::test]
async fn dev_mode_makes_and_prints_an_api_key() {
    let gw = Gateway::builder()
        .without("--api-key")
        .without("--jwt-secret")
        .flag("--dev")
        .start()
        .await;
    let key = gw
        .logs()
        .iter()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["message"]
                .as_str()?
                .strip_prefix("dev API key: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no `dev API key:` line: {:#?}", gw.logs()));
    let auth = format!("Bearer {key}");
    let r = http(
        gw.addr(),
        "GET",
        "/api/nodes",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // A node with a configured key prints none.
    let configured = Gateway::builder().flag("--dev").start().await;
    assert!(
        !configured.logs().iter().any(|l| l.contains("dev API key")),
        "{:#?}",
        configured.logs()
    );
}

#[tokio::test]
async fn logs_into_a_pipe_carry_no_colour_escapes() {
    let gw = Gateway::builder()
        .arg("--log-format", "human")
        .arg("--log", "debug")
        .start()
        .await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    c.request_ok("ping", json!({})).await;
    let logs = gw.logs();
    assert!(logs.iter().any(|l| l.contains(" listening ")), "{logs:#?}");
    if let Some(line) = logs.iter().find(|l| l.contains('\u{1b}')) {
        panic!("an ANSI escape in a piped log: {line:?}");
    }
}
