//! A WebSocket client speaking the v1 protocol in either encoding.
//!
//! The client reads its socket only while one of its methods is awaited: a test that wants a
//! client which "stops reading" (slow consumer, heartbeat) simply holds it without calling it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for a reply or an expected push.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code reported when the connection ended without a close frame.
pub const ABNORMAL_CLOSE: u16 = 1006;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The frame encoding of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `v1.json`: text frames.
    Json,
    /// `v1.msgpack`: binary frames.
    MsgPack,
}

/// Options for opening a WebSocket connection to a gateway.
#[derive(Debug, Clone)]
pub struct Connect {
    addr: String,
    path: String,
    query_token: Option<String>,
    query: Vec<(String, String)>,
    bearer: Option<String>,
    protocols: Option<String>,
    headers: Vec<(String, String)>,
    /// `wss://`, trusting these roots.
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// A handshake the server refused with an HTTP status instead of upgrading.
#[derive(Debug)]
pub struct HttpRefusal {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body, if any.
    pub body: String,
}

impl Connect {
    /// A connection to `ws://addr/ws` with no token and no subprotocol.
    pub fn new(addr: &str) -> Connect {
        Connect {
            addr: addr.to_string(),
            path: "/ws".into(),
            query_token: None,
            query: Vec::new(),
            bearer: None,
            protocols: None,
            headers: Vec::new(),
            tls: None,
        }
    }

    /// Adds a request header (`Origin`, for instance).
    pub fn header(mut self, name: &str, value: &str) -> Connect {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends the token as the `token` query parameter.
    pub fn token(mut self, token: &str) -> Connect {
        self.query_token = Some(token.to_string());
        self
    }

    /// Adds a query parameter (`user=<id>`, which a load balancer may hash on).
    pub fn query(mut self, name: &str, value: &str) -> Connect {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends the token in an `Authorization: Bearer` header.
    pub fn bearer(mut self, token: &str) -> Connect {
        self.bearer = Some(token.to_string());
        self
    }

    /// Offers subprotocols (the raw `Sec-WebSocket-Protocol` value, e.g. `v1.msgpack`).
    pub fn protocol(mut self, protocols: &str) -> Connect {
        self.protocols = Some(protocols.to_string());
        self
    }

    /// Offers `v1.msgpack`.
    pub fn msgpack(self) -> Connect {
        self.protocol("v1.msgpack")
    }

    /// Over TLS (`wss://`), the server verified against `config`'s roots.
    pub fn tls(mut self, config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>) -> Connect {
        self.tls = Some(config);
        self
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let mut url = format!("{scheme}://{}{}", self.addr, self.path);
        let mut sep = '?';
        if let Some(t) = &self.query_token {
            url.push_str("?token=");
            url.push_str(t);
            sep = '&';
        }
        for (name, value) in &self.query {
            url.push(sep);
            url.push_str(name);
            url.push('=');
            url.push_str(value);
            sep = '&';
        }
        url
    }

    /// Performs the handshake, returning tungstenite's error on failure.
    pub async fn try_connect(
        &self,
    ) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
        let mut req = self.url().into_client_request()?;
        if let Some(b) = &self.bearer {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {b}")).expect("header value"),
            );
        }
        if let Some(p) = &self.protocols {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(p).expect("header value"),
            );
        }
        for (name, value) in &self.headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(256 << 20);
        config.max_frame_size = Some(256 << 20);
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let fut =
            tokio_tungstenite::connect_async_tls_with_config(req, Some(config), false, connector);
        match tokio::time::timeout(REPLY_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "websocket handshake timed out",
            ))),
        }
    }

    /// Connects and reads the first frame, which must be a `welcome` push
    /// (available as [`Client::welcome`]). Panics on any failure.
    pub async fn connect(self) -> Client {
        let (ws, resp) = match self.try_connect().await {
            Ok(x) => x,
            Err(tungstenite::Error::Http(resp)) => panic!(
                "connecting to {} was refused with HTTP {}: {}",
                self.url(),
                resp.status(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
            ),
            Err(e) => panic!("connecting to {}: {e}", self.url()),
        };
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().expect("ascii protocol").to_string());
        let encoding = if protocol.as_deref() == Some("v1.msgpack") {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        let mut client = Client {
            ws,
            encoding,
            protocol,
            next_id: 1,
            pushes: VecDeque::new(),
            skipped: Vec::new(),
            replies: HashMap::new(),
            welcome: Value::Null,
            close_code: None,
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        match client.read_frame(deadline).await {
            Some(Incoming::Frame(v)) => {
                assert_eq!(
                    v["op"], "welcome",
                    "the first frame after the upgrade must be a welcome push, got {v}"
                );
                // `read_frame` queued it as a push; it is kept as `welcome` instead.
                client.pushes.clear();
                client.welcome = v;
            }
            Some(Incoming::Closed(code)) => {
                panic!("connection closed with {code} before the welcome push")
            }
            None => panic!("no welcome push within {REPLY_TIMEOUT:?}"),
        }
        client
    }

    /// Expects the server to refuse the handshake with an HTTP status; panics when the upgrade
    /// succeeds or the connection fails in another way.
    pub async fn expect_refusal(self) -> HttpRefusal {
        match self.try_connect().await {
            Ok((_, resp)) => panic!(
                "expected {} to be refused with an HTTP status, but it was upgraded (status {})",
                self.url(),
                resp.status()
            ),
            Err(tungstenite::Error::Http(resp)) => HttpRefusal {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned(),
            },
            Err(e) => panic!(
                "expected {} to be refused with an HTTP status, got another error: {e}",
                self.url()
            ),
        }
    }

    /// The handshake's HTTP status: 101 when upgraded (the connection is then dropped), the
    /// refusal's status otherwise. Panics on other failures (I/O, protocol).
    pub async fn expect_status(self) -> u16 {
        match self.try_connect().await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!(
                "expected an HTTP status from {}, got another error: {e}",
                self.url()
            ),
        }
    }
}

enum Incoming {
    Frame(Value),
    Closed(u16),
}

/// A connected v1 client.
///
/// Replies are matched by `id`; pushes that arrive while waiting for a reply are kept in a
/// queue for [`next_push`](Self::next_push). Replies with `id` 0 (malformed frames) are kept
/// until [`wait_reply(0, ..)`](Self::wait_reply) takes them.
pub struct Client {
    ws: Ws,
    encoding: Encoding,
    protocol: Option<String>,
    next_id: i64,
    pushes: VecDeque<Value>,
    skipped: Vec<Value>,
    replies: HashMap<i64, VecDeque<Value>>,
    /// The welcome push (the first frame).
    pub welcome: Value,
    close_code: Option<u16>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("encoding", &self.encoding)
            .field("welcome", &self.welcome)
            .field("queued_pushes", &self.pushes.len())
            .field("close_code", &self.close_code)
            .finish()
    }
}

impl Client {
    /// Connects with `?token=` in JSON mode.
    pub async fn connect(addr: &str, token: &str) -> Client {
        Connect::new(addr).token(token).connect().await
    }

    /// Connects with `?token=` offering `v1.msgpack`; panics unless the server chose it.
    pub async fn connect_msgpack(addr: &str, token: &str) -> Client {
        let c = Connect::new(addr).token(token).msgpack().connect().await;
        assert_eq!(
            c.encoding,
            Encoding::MsgPack,
            "server did not echo v1.msgpack"
        );
        c
    }

    /// The encoding in use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The subprotocol the server echoed, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The user id from the welcome push.
    pub fn user(&self) -> &str {
        self.welcome["user"].as_str().unwrap_or_default()
    }

    /// Encodes `v` in this connection's encoding.
    pub fn encode(&self, v: &Value) -> Message {
        match self.encoding {
            Encoding::Json => Message::text(v.to_string()),
            Encoding::MsgPack => {
                Message::binary(rmp_serde::to_vec_named(v).expect("msgpack encode"))
            }
        }
    }

    /// Sends a command with a fresh id, without waiting; returns the id.
    pub async fn send(&mut self, op: &str, fields: Value) -> i64 {
        self.try_send(op, fields)
            .await
            .unwrap_or_else(|e| panic!("sending {op}: {e}"))
    }

    /// Like [`send`](Self::send), returning the send error instead of panicking.
    pub async fn try_send(&mut self, op: &str, fields: Value) -> Result<i64, tungstenite::Error> {
        let id = self.next_id;
        self.next_id += 1;
        let mut obj = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => panic!("command fields must be an object, got {other}"),
        };
        obj.insert("id".into(), json!(id));
        obj.insert("op".into(), json!(op));
        let msg = self.encode(&Value::Object(obj));
        self.ws.send(msg).await?;
        Ok(id)
    }

    /// Sends a command and waits for its reply (the whole reply object, `id` and `ok`/`error`).
    pub async fn request(&mut self, op: &str, fields: Value) -> Value {
        let id = self.send(op, fields).await;
        self.wait_reply(id, REPLY_TIMEOUT).await
    }

    /// Sends a command and returns its `ok` object; panics on an error reply.
    pub async fn request_ok(&mut self, op: &str, fields: Value) -> Value {
        let reply = self.request(op, fields.clone()).await;
        assert!(
            reply.get("error").is_none() && reply.get("ok").is_some_and(Value::is_object),
            "{op} {fields} should succeed, got {reply}"
        );
        reply["ok"].clone()
    }

    /// Sends a command and returns its error code; panics on an ok reply.
    pub async fn request_err(&mut self, op: &str, fields: Value) -> String {
        let reply = self.request(op, fields.clone()).await;
        error_code(&reply)
            .unwrap_or_else(|| panic!("{op} {fields} should fail, got {reply}"))
            .to_string()
    }

    /// Subscribes; returns the `ok` object.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.request_ok("subscribe", json!({ "channel": channel }))
            .await
    }

    /// Publishes; returns the acknowledged offset.
    pub async fn publish(&mut self, channel: &str, data: Value) -> u64 {
        let ok = self
            .request_ok("publish", json!({ "channel": channel, "data": data }))
            .await;
        crate::as_u64(&ok["offset"])
    }

    /// Waits for the reply with `id`; panics on timeout or when the connection closes.
    pub async fn wait_reply(&mut self, id: i64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(q) = self.replies.get_mut(&id)
                && let Some(v) = q.pop_front()
            {
                return v;
            }
            match self.read_frame(deadline).await {
                Some(Incoming::Frame(_)) => {}
                Some(Incoming::Closed(code)) => panic!(
                    "connection closed with {code} while waiting for reply {id}; pushes: {:?}",
                    self.pushes
                ),
                None => panic!("no reply with id {id} within {timeout:?}"),
            }
        }
    }

    /// A reply with `id` already received and not yet taken, without reading the socket.
    pub fn take_reply(&mut self, id: i64) -> Option<Value> {
        self.replies.get_mut(&id).and_then(VecDeque::pop_front)
    }

    /// The next push (a frame without `id`), or `None` after `timeout`.
    /// Panics when the connection closes.
    pub async fn next_push(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.pushes.pop_front() {
                return Some(v);
            }
            match self.read_frame(deadline).await {
                Some(Incoming::Frame(_)) => {}
                Some(Incoming::Closed(code)) => {
                    panic!("connection closed with {code} while waiting for a push")
                }
                None => return None,
            }
        }
    }

    /// The next push with the given `op`, skipping pushes of other ops. Skipped pushes are
    /// kept in [`skipped`](Self::skipped); skipping a `message` push panics (a test that
    /// waits for something else must not lose a delivery unseen).
    pub async fn next_push_of(&mut self, op: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_push(left).await?;
            if v["op"] == op {
                return Some(v);
            }
            self.skip(v, &format!("waiting for a {op} push"));
        }
    }

    /// The next `message` push, which must be on `channel`: a message on another channel
    /// panics, other pushes are skipped (see [`skipped`](Self::skipped)). Panics after
    /// `timeout`.
    pub async fn expect_message(&mut self, channel: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_push(left).await {
                Some(v) if v["op"] == "message" && v["channel"] == channel => return v,
                Some(v) => self.skip(v, &format!("waiting for a message on {channel}")),
                None => panic!(
                    "no message on {channel} within {timeout:?}; skipped meanwhile: {:?}",
                    self.skipped
                ),
            }
        }
    }

    fn skip(&mut self, push: Value, why: &str) {
        assert!(
            push["op"] != "message",
            "a message push arrived while {why}: {push}"
        );
        self.skipped.push(push);
    }

    /// Pushes that [`next_push_of`](Self::next_push_of) and
    /// [`expect_message`](Self::expect_message) skipped, oldest first (never a `message`).
    pub fn skipped(&self) -> &[Value] {
        &self.skipped
    }

    /// The pushes received so far and not yet consumed.
    pub fn pending_pushes(&self) -> &VecDeque<Value> {
        &self.pushes
    }

    /// Takes the pushes received so far and not yet consumed.
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// Reads until the server closes the connection; returns the last `disconnect` push seen
    /// (queued ones included) and the close code ([`ABNORMAL_CLOSE`] when the connection ended
    /// without a close frame). Panics when it is still open after `timeout`.
    pub async fn expect_close(&mut self, timeout: Duration) -> (Option<Value>, u16) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.close_code {
                let disconnect = self
                    .pushes
                    .iter()
                    .rev()
                    .find(|p| p["op"] == "disconnect")
                    .cloned();
                return (disconnect, code);
            }
            match self.read_frame(deadline).await {
                Some(_) => {}
                None => panic!(
                    "connection still open after {timeout:?}; pushes: {}",
                    summarize(&self.pushes)
                ),
            }
        }
    }

    /// Sends a raw text frame.
    pub async fn send_raw_text(&mut self, text: &str) {
        self.send_raw(Message::text(text.to_string()))
            .await
            .expect("send text frame");
    }

    /// Sends a raw binary frame.
    pub async fn send_raw_binary(&mut self, data: Vec<u8>) {
        self.send_raw(Message::binary(data))
            .await
            .expect("send binary frame");
    }

    /// Sends any frame, returning the error instead of panicking.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// Closes normally (1000) and waits briefly for the server's close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.close_code.is_none() {
            if self.read_frame(deadline).await.is_none() {
                break;
            }
        }
    }

    /// Sends a close frame with `code` and returns the code of the server's close reply
    /// ([`ABNORMAL_CLOSE`] when the server dropped the connection without one). Panics
    /// when a `message` push arrives meanwhile, or when nothing ends within 5 s.
    pub async fn close_with(mut self, code: u16) -> u16 {
        use tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("send close frame");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.read_frame(deadline).await {
                Some(Incoming::Closed(code)) => return code,
                Some(Incoming::Frame(_)) => {}
                None => panic!("no close reply within 5 s"),
            }
        }
    }

    /// Reads one frame, dispatching it: replies into the reply map, pushes into the queue.
    /// `None` on timeout; `Closed` once the connection has ended (and on every later call).
    async fn read_frame(&mut self, deadline: Instant) -> Option<Incoming> {
        if let Some(code) = self.close_code {
            return Some(Incoming::Closed(code));
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(n) => n,
                Err(_) => return None,
            };
            let value = match next {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(
                        self.encoding,
                        Encoding::Json,
                        "server sent a text frame on a v1.msgpack connection: {}",
                        t.as_str()
                    );
                    serde_json::from_str::<Value>(t.as_str()).unwrap_or_else(|e| {
                        panic!(
                            "server sent a text frame that is not JSON ({e}): {}",
                            t.as_str()
                        )
                    })
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(
                        self.encoding,
                        Encoding::MsgPack,
                        "server sent a binary frame on a v1.json connection ({} bytes)",
                        b.len()
                    );
                    rmp_serde::from_slice::<Value>(&b).unwrap_or_else(|e| {
                        panic!("server sent a binary frame that is not a MessagePack value: {e}")
                    })
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    self.close_code = Some(code);
                    // Complete the closing handshake as a browser would: polling on sends
                    // tungstenite's queued close reply, then sees the end of the stream.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return Some(Incoming::Closed(code));
                }
                Some(Err(_)) | None => {
                    self.close_code = Some(ABNORMAL_CLOSE);
                    return Some(Incoming::Closed(ABNORMAL_CLOSE));
                }
            };
            assert!(
                value.is_object(),
                "server sent a frame that is not an object: {value}"
            );
            match value.get("id") {
                Some(id) => {
                    let id = id
                        .as_i64()
                        .unwrap_or_else(|| panic!("reply with a non-integer id: {value}"));
                    self.replies.entry(id).or_default().push_back(value.clone());
                }
                None => self.pushes.push_back(value.clone()),
            }
            return Some(Incoming::Frame(value));
        }
    }
}

/// The `error.code` of a reply, if it is an error reply.
pub fn error_code(reply: &Value) -> Option<&str> {
    reply.get("error").map(|e| {
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without a string code: {reply}"))
    })
}

fn summarize(pushes: &VecDeque<Value>) -> String {
    let n = pushes.len();
    let tail: Vec<String> = pushes
        .iter()
        .rev()
        .take(3)
        .map(|p| p.to_string().chars().take(300).collect())
        .collect();
    format!("{n} queued, last ones (newest first): {tail:?}")
}
