//! TLS from the binary (`--tls-cert`, `--tls-key`): `wss://` and `https://` on the one port,
//! the chain as `openssl s_client` sees it, a certificate swapped on SIGHUP while connections
//! stay up, and what is refused (plain HTTP on the TLS port, files that do not fit).

use e2e::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn tls_gateway(cert: &ServerCert) -> Gateway {
    Gateway::start(&[
        "--tls-cert",
        cert.chain.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ])
    .await
}

/// What `openssl s_client` prints for a connection to `addr`, trusting `ca`.
fn s_client(addr: &str, ca: &TestCa) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-showcerts", "-CAfile"])
        .arg(ca.cert_path())
        .args(["-verify_return_error", "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn wss_and_https_share_the_port_and_openssl_sees_the_chain() {
    let ca = TestCa::new();
    let cert = ca.issue("gateway-one");
    let gw = tls_gateway(&cert).await;
    let tls = ca.client_config();

    // The chain: the node's certificate, then the authority's, verified.
    let addr = gw.addr().to_string();
    let printed = tokio::task::spawn_blocking(move || s_client(&addr, &ca))
        .await
        .unwrap();
    assert!(printed.contains("CN = gateway-one"), "{printed}");
    assert!(printed.contains("CN = e2e test authority"), "{printed}");
    assert!(printed.contains("Verify return code: 0 (ok)"), "{printed}");

    // wss:// for v1, https:// for the API and health, on the same port.
    let mut alice = Connect::new(gw.addr())
        .token(&token("alice"))
        .tls(tls.clone())
        .connect()
        .await;
    alice.subscribe("room:tls").await;
    let health = https(gw.addr(), &tls, "GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200, "{health:?}");
    let body = json!({"channel": "room:tls", "data": {"over": "https"}}).to_string();
    let published = https(
        gw.addr(),
        &tls,
        "POST",
        "/api/publish",
        &[API_AUTH],
        Some(&body),
    )
    .await;
    assert_eq!(published.status, 200, "{published:?}");
    let push = alice
        .next_push_of("message", secs(10))
        .await
        .expect("the message");
    assert_eq!(push["data"], json!({"over": "https"}));
    // The node tells clients where to reconnect with the scheme they use.
    let nodes = https(gw.addr(), &tls, "GET", "/api/nodes", &[API_AUTH], None).await;
    let url = format!("wss://{}/ws", gw.addr());
    assert!(nodes.body.contains(&url), "{url} in {nodes:?}");
}

#[tokio::test]
async fn a_sighup_serves_the_new_certificate_to_new_connections_and_keeps_the_old_ones() {
    let ca = TestCa::new();
    let first = ca.issue("first");
    let gw = tls_gateway(&first).await;
    let tls = ca.client_config();
    let (_, presented) = tls_connect(gw.addr(), &tls).await.expect("TLS");
    assert_eq!(presented, first.der, "the first certificate");
    let mut old = Connect::new(gw.addr())
        .token(&token("old"))
        .tls(tls.clone())
        .connect()
        .await;
    old.subscribe("room:renew").await;

    // Renewed in place, as certbot does: the same paths, new contents.
    let second = ca.issue("second");
    std::fs::copy(&second.chain, &first.chain).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    gw.send_signal("HUP");
    eventually(
        "new handshakes get the renewed certificate",
        secs(10),
        async || {
            let (_, presented) = tls_connect(gw.addr(), &tls).await.expect("TLS");
            presented == second.der
        },
    )
    .await;

    // The connection from before the renewal is still up and served.
    let mut new = Connect::new(gw.addr())
        .token(&token("new"))
        .tls(tls.clone())
        .connect()
        .await;
    new.publish("room:renew", json!("after the renewal")).await;
    let push = old
        .next_push_of("message", secs(10))
        .await
        .expect("delivered");
    assert_eq!(push["data"], "after the renewal");

    // A broken renewal keeps the certificate that works, and says so.
    std::fs::write(&first.chain, "not a certificate").unwrap();
    gw.send_signal("HUP");
    eventually("the failed reload is logged", secs(10), async || {
        gw.logs()
            .iter()
            .any(|l| l.contains("TLS certificate not reloaded"))
    })
    .await;
    let (_, presented) = tls_connect(gw.addr(), &tls).await.expect("TLS");
    assert_eq!(presented, second.der, "the working certificate stays");
    old.publish("room:renew", json!("still up")).await;
    let push = new.next_push_of("message", secs(10)).await;
    assert!(push.is_none(), "new is not subscribed: {push:?}");
    let push = old.next_push_of("message", secs(10)).await.expect("own");
    assert_eq!(push["data"], "still up");
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused_and_the_node_goes_on() {
    let ca = TestCa::new();
    let cert = ca.issue("gateway");
    let gw = tls_gateway(&cert).await;
    let tls = ca.client_config();
    // Cleartext HTTP and a WebSocket handshake to a TLS port: no answer but the close.
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut s, secs(10)).await;
        let answer = answer.expect("the node closes the connection");
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
            "cleartext must not be served"
        );
    }
    // A client that trusts another authority is refused too.
    let other = TestCa::new().client_config();
    assert!(tls_connect(gw.addr(), &other).await.is_err());
    // Each counted, and the node serves TLS clients as before.
    let metrics = https(gw.addr(), &tls, "GET", "/metrics", &[], None).await;
    let failed = metric_value(&metrics.body, "gateway_tls_handshake_failures_total");
    assert!(failed >= Some(2.0), "{failed:?}");
    let mut c = Connect::new(gw.addr())
        .token(&token("after"))
        .tls(tls)
        .connect()
        .await;
    c.subscribe("room:after").await;
}

#[tokio::test]
async fn certificate_files_that_do_not_fit_are_configuration_errors() {
    let ca = TestCa::new();
    let cert = ca.issue("gateway");
    let other = ca.issue("other");
    let dir = TempDir::new("tls-bad");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no PEM here\n").unwrap();
    let missing = dir.join("missing.pem");
    let chain = cert.chain.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--tls-cert", chain],
            vec!["--tls-cert and --tls-key go together"],
        ),
        (
            vec![
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                cert.key.to_str().unwrap(),
            ],
            vec!["missing.pem"],
        ),
        (
            vec![
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                cert.key.to_str().unwrap(),
            ],
            vec!["garbage.pem", "a PEM block does not end"],
        ),
        (
            vec![
                "--tls-cert",
                empty.to_str().unwrap(),
                "--tls-key",
                cert.key.to_str().unwrap(),
            ],
            vec!["empty.pem", "no CERTIFICATE block"],
        ),
        (
            vec!["--tls-cert", chain, "--tls-key", empty.to_str().unwrap()],
            vec!["empty.pem", "no PRIVATE KEY block"],
        ),
        (
            vec![
                "--tls-cert",
                chain,
                "--tls-key",
                other.key.to_str().unwrap(),
            ],
            vec!["not the key of the certificate"],
        ),
    ];
    // A line of the key's base64, which must never be printed.
    let key_text = std::fs::read_to_string(&cert.key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap().to_string();
    for (args, needles) in cases {
        let mut b = Gateway::builder();
        for pair in args.chunks(2) {
            b = b.arg(pair[0], pair[1]);
        }
        let (status, out) = b.run_to_exit(Duration::from_secs(20)).await;
        assert_config_error(&status, &out, &needles);
        assert!(!out.contains(&key_body), "no key material in {out}");
    }
}

#[tokio::test]
async fn a_sighup_without_tls_is_logged_and_ends_nothing() {
    let gw = Gateway::start(&[]).await;
    let mut c = Client::connect(gw.addr(), &token("hup")).await;
    c.subscribe("room:hup").await;
    // `systemctl reload` sends SIGHUP; its default action would end the process.
    gw.send_signal("HUP");
    eventually("the SIGHUP is logged", secs(10), async || {
        gw.logs().iter().any(|l| l.contains("nothing to reload"))
    })
    .await;
    c.publish("room:hup", json!("still here")).await;
    let push = c
        .next_push_of("message", secs(10))
        .await
        .expect("delivered");
    assert_eq!(push["data"], "still here");
}
