//! Connection and process lifecycle: heartbeats, token expiry and refresh, draining on
//! SIGTERM/SIGINT, refusing to start without a usable JWT secret.

use e2e::{
    Client, Gateway, Token, assert_config_error, assert_startup_error, exchange_head, http,
    read_until_closed, secs, token,
};
use serde_json::json;

/// The frames in `bytes` (whole ones; a trailing partial frame is left out): opcode and
/// payload each, read with tungstenite's own header parser.
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    let mut cursor = std::io::Cursor::new(bytes);
    let mut out = Vec::new();
    while let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
        let start = cursor.position() as usize;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        out.push((u8::from(header.opcode), payload.to_vec()));
        cursor.set_position((start + len as usize) as u64);
    }
    out
}

#[tokio::test]
async fn client_that_stops_reading_gets_heartbeat_timeout() {
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--idle-timeout-secs", "3"]).await;
    // A client that reads everything and never answers: a raw socket after the handshake
    // (a WebSocket library would answer the server's pings by itself). It sees every frame
    // the server sends, whenever the close comes.
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("alice")
    );
    let (r, mut received, mut s) = exchange_head(gw.addr(), &request).await;
    assert_eq!(r.status, 101, "{r:?}");
    let rest = read_until_closed(&mut s, secs(30))
        .await
        .expect("the server closed the connection within 30 s");
    received.extend_from_slice(&rest);
    let frames = frames(&received);
    let texts: Vec<serde_json::Value> = frames
        .iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| serde_json::from_slice(p).expect("a JSON frame"))
        .collect();
    assert_eq!(
        texts.first().map(|w| &w["op"]),
        Some(&json!("welcome")),
        "{texts:?}"
    );
    assert!(
        frames.iter().any(|(op, _)| *op == 9),
        "the server pinged: {frames:?}"
    );
    let d = texts
        .iter()
        .find(|t| t["op"] == "disconnect")
        .unwrap_or_else(|| panic!("a disconnect push precedes the close: {texts:?}"));
    assert_eq!(d["code"], "heartbeat_timeout", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    let close = frames
        .iter()
        .find(|(op, _)| *op == 8)
        .unwrap_or_else(|| panic!("a close frame: {frames:?}"));
    assert_eq!(
        close.1.get(..2),
        Some(&4004u16.to_be_bytes()[..]),
        "{close:?}"
    );
}

#[tokio::test]
async fn client_that_keeps_reading_stays_connected() {
    // Four pings per idle timeout: a loaded machine may delay one or two.
    let gw = Gateway::start(&["--ping-interval-secs", "1", "--idle-timeout-secs", "4"]).await;
    let mut c = Client::connect(gw.addr(), &token("alice")).await;
    // Reading answers the server's pings (tungstenite replies with pongs); no command is sent.
    // `next_push` panics if the connection closes meanwhile.
    let push = c.next_push(secs(8)).await;
    assert!(push.is_none(), "unexpected push: {push:?}");
    assert_eq!(c.request_ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn expired_token_disconnects() {
    let gw = Gateway::start(&["--jwt-leeway-secs", "0"]).await;
    // Eight seconds: a loaded machine may take a few to connect, with no leeway.
    let mut c = Client::connect(gw.addr(), &Token::new("alice").exp_in(8).hs256()).await;
    c.request_ok("ping", json!({})).await;
    let (disconnect, code) = c.expect_close(secs(20)).await;
    let d = disconnect.expect("a disconnect push precedes the close");
    assert_eq!(d["code"], "token_expired", "{d}");
    assert_eq!(d["reconnect"], true, "{d}");
    assert_eq!(code, 4001);
}

#[tokio::test]
async fn refresh_extends_the_connection() {
    let gw = Gateway::start(&["--jwt-leeway-secs", "0"]).await;
    let mut c = Client::connect(gw.addr(), &Token::new("alice").exp_in(6).hs256()).await;
    let fresh = Token::new("alice").exp_in(60);
    let ok = c
        .request_ok("refresh", json!({ "token": fresh.hs256() }))
        .await;
    assert_eq!(ok["exp"].as_i64(), fresh.exp(), "{ok}");
    // Well past the first token's expiry.
    let push = c.next_push(secs(9)).await;
    assert!(push.is_none(), "unexpected push: {push:?}");
    assert_eq!(c.request_ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn refresh_with_a_bad_token_is_refused_and_keeps_the_old_expiry() {
    let gw = Gateway::start(&["--jwt-leeway-secs", "0"]).await;
    let mut c = Client::connect(gw.addr(), &Token::new("alice").exp_in(8).hs256()).await;
    let other = Token::new("mallory").exp_in(60).hs256();
    assert_eq!(
        c.request_err("refresh", json!({ "token": other })).await,
        "forbidden",
        "a token for another sub"
    );
    assert_eq!(
        c.request_err("refresh", json!({ "token": "garbage" }))
            .await,
        "unauthorized"
    );
    assert_eq!(
        c.request_err(
            "refresh",
            json!({ "token": Token::new("alice").exp_in(-60).hs256() })
        )
        .await,
        "unauthorized",
        "an expired token"
    );
    assert_eq!(
        c.request_err(
            "refresh",
            json!({ "token": Token::new("alice").exp_in(60).alg_none() })
        )
        .await,
        "unauthorized",
        "alg none"
    );
    // Still open...
    c.request_ok("ping", json!({})).await;
    // ...until the original token expires.
    let (disconnect, code) = c.expect_close(secs(20)).await;
    assert_eq!(
        disconnect.map(|d| d["code"].clone()),
        Some(json!("token_expired"))
    );
    assert_eq!(code, 4001);
}

async fn drain(signal: &str) {
    let mut gw = Gateway::start(&["--drain-timeout-secs", "5"]).await;
    let mut clients = Vec::new();
    for u in ["a", "b", "c"] {
        let mut c = Client::connect(gw.addr(), &token(u)).await;
        c.subscribe("room:drain").await;
        clients.push(c);
    }
    let r = http(gw.addr(), "GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200);
    gw.send_signal(signal);
    for c in &mut clients {
        let (disconnect, code) = c.expect_close(secs(15)).await;
        let d = disconnect.expect("a disconnect push precedes the close");
        assert_eq!(d["code"], "shutdown", "{d}");
        assert_eq!(d["reconnect"], true, "{d}");
        assert_eq!(code, 1012);
    }
    let status = gw
        .wait_exit(secs(15))
        .await
        .unwrap_or_else(|| panic!("gateway still running 15 s after SIG{signal}"));
    assert!(
        status.success(),
        "exit status after SIG{signal}: {status:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    drain("TERM").await;
}

#[tokio::test]
async fn sigint_drains_and_exits_0() {
    drain("INT").await;
}

/// While a drain waits for its sessions to close, `/readyz` says 503 and new WebSocket
/// handshakes are refused with 503: a client that does not answer the close handshake keeps
/// the node draining for a moment, long enough to look.
#[tokio::test]
async fn draining_node_is_not_ready_and_refuses_new_connections() {
    let mut gw = Gateway::start(&["--drain-timeout-secs", "10"]).await;
    let addr = gw.addr().to_string();
    // Never polled: it reads neither the disconnect nor the close frame, so the server waits
    // for its close reply.
    let _silent = Client::connect(&addr, &token("silent")).await;
    gw.send_signal("TERM");
    let deadline = tokio::time::Instant::now() + secs(10);
    loop {
        let r = http(&addr, "GET", "/readyz", &[], None).await;
        if r.status == 503 {
            break;
        }
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said 503"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = e2e::Connect::new(&addr)
        .token(&token("late"))
        .expect_refusal()
        .await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.headers.contains_key("retry-after"), "{refused:?}");
    let status = gw
        .wait_exit(secs(15))
        .await
        .expect("exited after the drain");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn idle_gateway_exits_0_on_sigterm() {
    let mut gw = Gateway::start(&[]).await;
    gw.send_signal("TERM");
    let status = gw.wait_exit(secs(15)).await.expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn refuses_to_start_without_a_jwt_secret() {
    let (status, out) = Gateway::builder()
        .without("--jwt-secret")
        .run_to_exit(secs(15))
        .await;
    assert_config_error(&status, &out, &["jwt", "secret"]);
}

#[tokio::test]
async fn refuses_a_short_jwt_secret() {
    let short = "x".repeat(31);
    let (status, out) = Gateway::builder()
        .arg("--jwt-secret", &short)
        .run_to_exit(secs(15))
        .await;
    assert_config_error(&status, &out, &["jwt", "secret"]);
    assert!(
        !out.contains(&short),
        "the secret itself is never printed: {out}"
    );
}

#[tokio::test]
async fn secret_from_environment_works() {
    let gw = Gateway::builder()
        .without("--jwt-secret")
        .env("GATEWAY_JWT_SECRET", e2e::TEST_SECRET)
        .start()
        .await;
    let c = Client::connect(gw.addr(), &token("alice")).await;
    assert_eq!(c.welcome["user"], "alice");
}

/// Each worker thread serves a listener of its own on the one port: 40 clients, which the
/// kernel spreads over four workers by their ports, all connect, and a publication reaches
/// the subscribers of every worker exactly once each, in order (a marker message last: a
/// duplicate or a gap shows before it). No ping within the test: a subscriber is woken by
/// its messages alone.
#[tokio::test]
async fn every_worker_serves_its_listener_and_its_subscribers() {
    let gw = Gateway::start(&[
        "--worker-threads",
        "4",
        "--ping-interval-secs",
        "600",
        "--idle-timeout-secs",
        "1200",
    ])
    .await;
    let mut subscribers = Vec::new();
    for i in 0..40 {
        let mut c = Client::connect(gw.addr(), &token(&format!("w{i}"))).await;
        c.subscribe("room:workers").await;
        subscribers.push(c);
    }
    let mut publisher = Client::connect(gw.addr(), &token("publisher")).await;
    for i in 0..=20 {
        publisher.publish("room:workers", json!(i)).await;
    }
    for c in &mut subscribers {
        for i in 0..=20 {
            let m = c.expect_message("room:workers", secs(20)).await;
            assert_eq!(m["data"], json!(i), "{m}");
        }
    }
}

/// `SO_REUSEPORT` would let a second node of the same user share a busy port and take some
/// of its connections: the second one refuses to start instead.
#[tokio::test]
async fn a_second_node_on_a_busy_port_refuses_to_start() {
    let first = Gateway::start(&[]).await;
    let (status, output) = Gateway::builder()
        .arg("--listen", first.addr())
        .run_to_exit(secs(20))
        .await;
    assert_startup_error(&status, &output, &["binding", "Address already in use"]);
    // The first one still serves.
    let mut c = Client::connect(first.addr(), &token("still")).await;
    c.subscribe("room:still").await;
}

/// A socket that writes at most a few bytes per write, each in its own segment: a request
/// head reaches the node in pieces.
struct Trickle(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(7);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Sends `{"id": id, "op": "ping"}` and reads until its reply, within 5 s; the `welcome` must
/// come first when `welcome` is set.
async fn ping_over<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, id: i64, welcome: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(json!({"id": id, "op": "ping"}).to_string()))
        .await
        .expect("send");
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to ping {id} in 5 s: {seen:?}"));
        let Some(Ok(Message::Text(text))) = next else {
            panic!("the socket ended or sent no text: {next:?}, after {seen:?}");
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if welcome && seen.is_empty() {
            assert_eq!(v["op"], "welcome", "the first frame: {v}");
        }
        if v["id"] == id {
            assert!(v.get("error").is_none(), "{v}");
            return;
        }
        seen.push(v);
    }
}

#[tokio::test]
async fn handshakes_in_pieces_after_other_requests_or_ahead_of_frames_all_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]).await;
    let url = |user: &str| format!("ws://{}/ws?token={}", gw.addr(), token(user));

    // A head that arrives a few bytes at a time.
    let s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(url("a"), Trickle(s))
        .await
        .expect("a handshake in pieces");
    assert_eq!(response.status(), 101);
    ping_over(&mut ws, 1, true).await;

    // An upgrade on a keep-alive connection, after a plain request on it.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    // The head, then as many bytes as its `content-length` says.
    let whole = |raw: &[u8]| {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))?
            .trim()
            .parse()
            .ok()?;
        (raw.len() == end + 4 + len).then_some(())
    };
    while whole(&raw).is_none() {
        let n = tokio::time::timeout(secs(5), s.read(&mut buf))
            .await
            .expect("the health answer in 5 s")
            .unwrap();
        assert!(n > 0, "closed after a plain request: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
    let (mut ws, response) = tokio_tungstenite::client_async(url("b"), s)
        .await
        .expect("an upgrade after a plain request");
    assert_eq!(response.status(), 101);
    ping_over(&mut ws, 2, true).await;

    // Frames sent right behind the request, before the `101` came back: none is lost.
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("c")
    );
    let mut bytes = request.into_bytes();
    for id in [3, 4] {
        // A masked text frame, as a client sends it.
        let payload = json!({"id": id, "op": "ping"}).to_string().into_bytes();
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + secs(5);
    let texts = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(received.starts_with(b"HTTP/1.1 101"), "{received:?}");
            let texts: Vec<serde_json::Value> = frames(&received[end + 4..])
                .iter()
                .filter(|(op, _)| *op == 1)
                .map(|(_, p)| serde_json::from_slice(p).expect("JSON"))
                .collect();
            if texts.len() >= 3 {
                break texts;
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no welcome and two replies in 5 s: {received:?}"))
            .unwrap();
        assert!(n > 0, "closed: {received:?}");
        received.extend_from_slice(&buf[..n]);
    };
    assert_eq!(texts[0]["op"], "welcome", "{texts:?}");
    assert_eq!(
        (texts[1]["id"].clone(), texts[2]["id"].clone()),
        (json!(3), json!(4))
    );
}
