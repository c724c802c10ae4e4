//! What the person who runs the gateway is given: the Grafana dashboard and the Prometheus
//! alert rules in `deploy/` name only series a real node exports.

use std::collections::BTreeSet;
use std::path::PathBuf;

use e2e::{Client, Gateway, api_post, http, secs, token};
use serde_json::{Value, json};

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `gateway_*` series name in `text`.
fn series_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A series name, not part of a longer word (`job="gateway"` has no underscore after).
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every query of a Grafana dashboard: panel targets and template variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        assert!(panel["datasource"].is_object(), "panel {}", panel["title"]);
        for target in targets {
            out.push(
                target["expr"]
                    .as_str()
                    .expect("a Prometheus query")
                    .to_string(),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        out.push(
            variable["definition"]
                .as_str()
                .expect("a query variable")
                .to_string(),
        );
    }
    out
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_name_only_series_a_node_exports() {
    // An embedded node with its archive, after traffic of every kind the panels show: an
    // accepted and a refused handshake, a publish delivered, a server disconnect.
    let gw = Gateway::builder().embedded().start().await;
    let mut c = Client::connect(gw.addr(), &token("olga")).await;
    c.subscribe("room:ops").await;
    c.publish("room:ops", json!("hi")).await;
    c.expect_message("room:ops", secs(5)).await;
    let refused = http(gw.addr(), "GET", "/ws?token=nope", &[], None).await;
    assert_ne!(refused.status, 101);
    let r = api_post(gw.addr(), "/api/disconnect", json!({"user": "olga"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.expect_close(secs(5)).await;
    let scrape = http(gw.addr(), "GET", "/metrics", &[], None).await.body;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();

    let dashboard: Value =
        serde_json::from_str(&deploy("grafana/gateway.json")).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let queries = dashboard_queries(&dashboard);
    let mut named = BTreeSet::new();
    for query in &queries {
        let names = series_named(query);
        assert!(
            !names.is_empty(),
            "a query names no gateway series: {query}"
        );
        named.extend(names);
    }
    let alerts = deploy("prometheus/alerts.yml");
    named.extend(series_named(&alerts));
    let missing: Vec<_> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported: {missing:?}\n{scrape}"
    );
    // And what the issue asks the dashboard to show is there.
    for wanted in [
        "gateway_connections",
        "gateway_handshakes_total",
        "gateway_messages_delivered_total",
        "gateway_publish_to_write_seconds_bucket",
        "gateway_outbound_queue_overflows_total",
        "gateway_disconnects_total",
        "gateway_broker_up",
        "gateway_archive_lag_seconds",
    ] {
        assert!(named.contains(wanted), "the dashboard lacks {wanted}");
    }
}
