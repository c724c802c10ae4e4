//! The load generator against a real node, small enough for CI: every scenario must end with
//! zero gaps, duplicates, reorders and errors, and report what it measured.

use e2e::{Gateway, assert_clean, run_loadgen, run_loadgen_full, run_loadgen_urls};
use serde_json::Value;

/// Runs loadgen with `args` against `gw`; returns its exit success and its JSON report.
fn loadgen(gw: &Gateway, args: &[&str]) -> (bool, Value) {
    run_loadgen(&[gw], args)
}

fn bench_gateway() -> Gateway {
    block_on(Gateway::start(&[
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
        "--max-connections-per-user",
        "1000",
    ]))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn chat_smoke_has_no_gap_duplicate_or_error() {
    let gw = bench_gateway();
    let (ok, json) = loadgen(
        &gw,
        &[
            "chat",
            "--users",
            "300",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "3",
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 300);
    assert!(json["sent"].as_u64().unwrap() >= 300 * 5, "{json:#}");
    assert_eq!(json["received"], json["expected"]);
    assert!(json["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(json["rss_per_connection_kib"].as_f64().is_some());
}

#[test]
fn chat_over_centrifugos_protocol_has_no_gap_duplicate_or_error() {
    let gw = bench_gateway();
    let url = format!("ws://{}/connection/websocket", gw.addr());
    let pid = gw.pid().to_string();
    let (ok, json) = run_loadgen_urls(
        &[&url],
        &[
            "chat",
            "--users",
            "200",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "3",
            "--protocol",
            "centrifugo",
            "--pid",
            &pid,
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 200);
    assert!(json["sent"].as_u64().unwrap() >= 200 * 5, "{json:#}");
    assert_eq!(json["received"], json["expected"]);
}

#[test]
fn chat_over_http_streaming_has_no_gap_duplicate_or_error() {
    let gw = bench_gateway();
    let url = format!("http://{}/connection/http_stream", gw.addr());
    let pid = gw.pid().to_string();
    let (ok, json) = run_loadgen_urls(
        &[&url],
        &[
            "chat",
            "--users",
            "100",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "3",
            "--protocol",
            "centrifugo-http-stream",
            "--pid",
            &pid,
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 100);
    assert!(json["sent"].as_u64().unwrap() >= 100 * 5, "{json:#}");
    assert_eq!(json["received"], json["expected"]);
}

#[test]
fn broadcast_smoke_over_two_workers_and_source_addresses() {
    let gw = bench_gateway();
    let (ok, json) = loadgen(
        &gw,
        &[
            "broadcast",
            "--subscribers",
            "200",
            "--publishers",
            "2",
            "--rate",
            "20",
            "--duration",
            "3",
            "--workers",
            "2",
            "--source-addrs",
            "2",
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["workers"], 2);
    assert_eq!(json["connections"], 202);
    assert_eq!(json["received"], json["expected"]);
}

#[test]
fn flood_and_churn_smoke() {
    let gw = bench_gateway();
    let (ok, json) = loadgen(
        &gw,
        &[
            "flood",
            "--connections",
            "300",
            "--rate",
            "1000",
            "--hold",
            "1",
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 300);
    assert!(json["connect_rate"].as_f64().unwrap() > 0.0);

    let (ok, json) = loadgen(
        &gw,
        &[
            "churn",
            "--measured",
            "100",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--churn-rate",
            "50",
            "--duration",
            "3",
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
}

/// One big room filled in each presence mode, and without presence; chat in a presence-less
/// namespace (what the benchmark compares with the peers).
#[test]
fn bigroom_smoke_in_every_presence_mode() {
    let gw = bench_gateway();
    for (channel, mode) in [
        ("room:big", "diff"),
        ("room:big", "each"),
        ("room:big", "default"),
        ("bench:big", "off"),
    ] {
        let (ok, json) = loadgen(
            &gw,
            &[
                "bigroom",
                "--members",
                "200",
                "--hold",
                "1",
                "--channel",
                channel,
                "--join-leave",
                mode,
            ],
        );
        assert!(ok, "{mode}: {json:#}");
        assert_clean(&json);
        assert_eq!(json["connections"], 200, "{mode}: {json:#}");
        assert!(json["server_cpu_us_per_connect"].as_f64().is_some());
    }
    let (ok, json) = loadgen(
        &gw,
        &[
            "chat",
            "--users",
            "100",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "2",
            "--channel-prefix",
            "bench:",
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["received"], json["expected"]);
}

/// With `--route`, every user asks `/v1/route` for its node (the one node, here).
#[test]
fn chat_through_route_lookup() {
    let gw = bench_gateway();
    let route = format!("http://{}", gw.addr());
    let (ok, json) = loadgen(
        &gw,
        &[
            "chat",
            "--users",
            "40",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "1",
            "--route",
            &route,
        ],
    );
    assert!(ok, "{json:#}");
    assert_clean(&json);
    assert_eq!(json["connections"], 40);
}

/// A threshold that cannot be met makes loadgen exit with code 3 after a complete run (a
/// crash would be 1 or 101, and no report).
#[test]
fn thresholds_fail_the_run() {
    let gw = bench_gateway();
    let pid = gw.pid().to_string();
    let run = run_loadgen_full(
        &[gw.addr()],
        &[
            "chat",
            "--users",
            "20",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "1",
            "--max-p99-ms",
            "0.000001",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(
        run.code,
        Some(3),
        "p99 cannot be under a nanosecond: {run:#?}"
    );
    assert!(
        run.stderr.contains("p99 latency above --max-p99-ms"),
        "{}",
        run.stderr
    );
    assert_clean(&run.report);
    assert!(
        run.report["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{:#}",
        run.report
    );
}
