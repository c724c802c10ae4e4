//! One client connection: connect (from a chosen source address), send commands, read frames,
//! in protocol v1 (JSON or MessagePack), as socket.io events, or in Centrifugo's client
//! protocol (JSON). The scenarios speak v1 commands and read v1-shaped replies; the other
//! framings are translated here.

use crate::cli::{Encoding, Protocol};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Signs an HS256 token for `user`, valid for a day, granting the `bench:` channels (the
/// broadcast scenario's channel is outside the open `room:` namespace, so that thousands of
/// subscribers do not each get everyone's presence `join`).
pub fn mint(secret: &str, user: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": exp, "channels": ["bench:*"] }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// Node URLs, used round-robin by connection index.
    pub urls: Vec<String>,
    /// Node URLs for publishers when they should sit elsewhere (empty: `urls`).
    pub publisher_urls: Vec<String>,
    /// Framing.
    pub protocol: Protocol,
    /// Encoding (v1).
    pub encoding: Encoding,
    /// Local address and ports to connect from (else the kernel's choice).
    pub source: Option<Arc<SourceAddr>>,
    /// Base URL (`http://host:port`) of a node whose `/v1/route` names each user's node.
    pub route: Option<String>,
}

/// A worker's source address, and the source ports it picks itself, per destination, from
/// its own slice of the port space (workers sharing an address get disjoint slices). Left to
/// the kernel, a source port is searched for in `connect()`, and that search grows with the
/// connections already open: at 100,000 it took most of the load workers' CPU. A port taken
/// (a listener, a socket from elsewhere, a lingering TIME_WAIT) is passed over.
#[derive(Debug)]
pub struct SourceAddr {
    addr: IpAddr,
    low: u16,
    high: u16,
    next: Mutex<HashMap<SocketAddr, u16>>,
}

impl SourceAddr {
    /// `addr` with slice `slice` of `slices` of the ports 1024..=65535.
    pub fn new(addr: IpAddr, slice: usize, slices: usize) -> SourceAddr {
        let span = (65_536 - 1024) / slices.max(1);
        let low = 1024 + span * slice.min(slices.max(1) - 1);
        SourceAddr {
            addr,
            low: low as u16,
            high: (low + span - 1) as u16,
            next: Mutex::new(HashMap::new()),
        }
    }

    /// The next port to try towards `to`.
    fn take(&self, to: SocketAddr) -> u16 {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let port = next.entry(to).or_insert(self.low);
        let taken = *port;
        *port = if taken >= self.high {
            self.low
        } else {
            taken + 1
        };
        taken
    }

    /// Connects to `addr` from this address, on the next free port of the slice.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
        let mut last = None;
        for _ in 0..256 {
            let socket = new_socket(addr)?;
            socket.set_reuseaddr(true)?;
            match socket.bind(SocketAddr::new(self.addr, self.take(addr))) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), AddrInUse | AddrNotAvailable) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) if matches!(e.kind(), AddrInUse | AddrNotAvailable) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::from(AddrNotAvailable)))
    }
}

/// Asks `base`'s `/v1/route` for the home node of the token's user; returns its WebSocket URL.
pub async fn route(base: &str, token: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base
        .strip_prefix("http://")
        .context("--route takes an http:// URL")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!(
        "GET /v1/route HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("route lookup failed: {}", head.lines().next().unwrap_or(""));
    }
    let json: Value = serde_json::from_str(body.trim())?;
    json["url"]
        .as_str()
        .map(str::to_owned)
        .context("route reply without url")
}

/// A frame from the server.
#[derive(Debug)]
pub enum Incoming {
    /// A `message` push, with only what the measurements need.
    Message(MessageInfo),
    /// Any other reply or push, decoded.
    Frame(Value),
    /// The server closed, with this close code (0 when none).
    Closed(u16),
}

/// What the load generator reads from a `message` push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Channel.
    pub channel: String,
    /// Offset.
    pub offset: u64,
    /// The publisher's send time (`data.t`, Unix ns), when present.
    pub sent_ns: Option<u64>,
}

/// The fields of a push read without building a JSON tree: the load generator must not be
/// the bottleneck of what it measures.
#[derive(serde::Deserialize)]
struct LightPush<'a> {
    #[serde(borrow, default)]
    op: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    data: Option<LightData>,
}

#[derive(serde::Deserialize)]
struct LightData {
    #[serde(default)]
    t: Option<u64>,
}

impl LightPush<'_> {
    fn message(self) -> Option<MessageInfo> {
        if self.op.as_deref() != Some("message") {
            return None;
        }
        Some(MessageInfo {
            channel: self.channel?.into_owned(),
            offset: self.offset?,
            sent_ns: self.data.and_then(|d| d.t),
        })
    }
}

/// Decodes a JSON push: the light way for `message`, a full tree otherwise.
fn decode_json(text: &str) -> anyhow::Result<Incoming> {
    if let Ok(light) = serde_json::from_str::<LightPush>(text)
        && let Some(message) = light.message()
    {
        return Ok(Incoming::Message(message));
    }
    Ok(from_value(serde_json::from_str(text)?))
}

/// A decoded frame; a `message` push whose payload the light reader could not take (data
/// that is not an object) still counts as a message.
fn from_value(frame: Value) -> Incoming {
    if frame["op"] == "message"
        && let (Some(channel), Some(offset)) = (frame["channel"].as_str(), frame["offset"].as_u64())
    {
        return Incoming::Message(MessageInfo {
            channel: channel.to_owned(),
            offset,
            sent_ns: frame["data"]["t"].as_u64(),
        });
    }
    Incoming::Frame(frame)
}

/// What carries a connection.
enum Link {
    /// A WebSocket.
    Ws(Box<WebSocketStream<TcpStream>>),
    /// Centrifugo's HTTP-streaming.
    Stream(Box<HttpStream>),
}

/// A Centrifugo session over HTTP-streaming: the response to `POST /connection/http_stream`
/// read as it comes, and the client's commands POSTed to `/emulation` on a keep-alive
/// connection of their own. HTTP/1.1 is written and read by hand here (a request line, a
/// few headers, a chunked body): an HTTP client library would hide the stream's chunks, and
/// the load generator needs nothing else of one.
struct HttpStream {
    stream: TcpStream,
    /// Bytes read, chunk framing included, not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into lines.
    body: Vec<u8>,
    /// Where the commands go, opened on the first one.
    post: Option<TcpStream>,
    addr: SocketAddr,
    source: Option<Arc<SourceAddr>>,
    host: String,
    session: String,
    node: String,
}

/// Reads an HTTP/1.1 response head from `s` into `buf`; returns the status and leaves what
/// follows the head in `buf`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("a response without a status")?;
            return Ok(status);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Moves the whole chunks of a chunked body from `raw` to `body`; true at the last chunk.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> anyhow::Result<bool> {
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return Ok(false);
        };
        let size = std::str::from_utf8(&raw[..eol])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("a chunk size")?;
        if size == 0 {
            return Ok(true);
        }
        if raw.len() < eol + 2 + size + 2 {
            return Ok(false);
        }
        body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw.drain(..eol + 2 + size + 2);
    }
}

impl HttpStream {
    /// POSTs `data` (commands as JSON lines) for the session.
    async fn post(&mut self, data: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let body = json!({"session": self.session, "node": self.node, "data": data}).to_string();
        let request = format!(
            "POST /emulation HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        for attempt in 0..2 {
            if self.post.is_none() {
                let s = match &self.source {
                    Some(source) => source.connect(self.addr).await?,
                    None => new_socket(self.addr)?.connect(self.addr).await?,
                };
                s.set_nodelay(true)?;
                self.post = Some(s);
            }
            let s = self.post.as_mut().context("a connection")?;
            let sent = s.write_all(request.as_bytes()).await;
            let mut rest = Vec::new();
            let status = match sent {
                Ok(()) => read_head(s, &mut rest).await,
                Err(e) => Err(e.into()),
            };
            match status {
                Ok(204) => return Ok(()),
                Ok(status) => bail!("/emulation answered {status}"),
                // The keep-alive connection was closed by the server: once more on a new one.
                Err(e) if attempt == 0 => {
                    let _ = e;
                    self.post = None;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("/emulation unreachable")
    }

    /// The next line of the stream; `None` when it ended.
    async fn line(&mut self) -> anyhow::Result<Option<String>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(eol) = self.body.iter().position(|b| *b == b'\n') {
                let line = String::from_utf8(self.body[..eol].to_vec())?;
                self.body.drain(..=eol);
                return Ok(Some(line));
            }
            if dechunk(&mut self.raw, &mut self.body)? && self.body.is_empty() {
                return Ok(None);
            }
            if self.body.contains(&b'\n') {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An open connection.
pub struct Connection {
    link: Link,
    protocol: Protocol,
    encoding: Encoding,
    next_id: i64,
    /// Decoded frames not yet handed out (a Centrifugo frame may hold several).
    pending: VecDeque<Incoming>,
}

/// The fields of a Centrifugo `pub` push the measurements need, read without a JSON tree:
/// `{"push": {"channel", "pub": {"data": {"t"}, "offset"}}}`.
#[derive(serde::Deserialize)]
struct LightCfPush<'a> {
    #[serde(borrow)]
    push: LightCfInner<'a>,
}

#[derive(serde::Deserialize)]
struct LightCfInner<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(rename = "pub")]
    publication: LightCfPub,
}

#[derive(serde::Deserialize)]
struct LightCfPub {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    data: Option<LightData>,
}

/// A v1 command as Centrifugo's: `{"id", "op": m, ...fields}` becomes `{"id", m: {fields}}`
/// (`since` becomes `recover` and `offset`; `join_leave` a bool, true for `each`).
fn to_centrifugo(command: &Value) -> Value {
    let mut fields = command.as_object().cloned().unwrap_or_default();
    let id = fields.remove("id").unwrap_or(Value::Null);
    let op = fields
        .remove("op")
        .and_then(|op| op.as_str().map(str::to_owned))
        .unwrap_or_default();
    fields.remove("idem");
    if let Some(since) = fields.remove("since") {
        fields.insert("recover".into(), json!(true));
        fields.insert("offset".into(), since);
    }
    if let Some(mode) = fields.remove("join_leave") {
        fields.insert(
            "join_leave".into(),
            json!(mode == "each" || mode == json!(true)),
        );
    }
    let mut out = serde_json::Map::new();
    out.insert("id".into(), id);
    out.insert(op, Value::Object(fields));
    Value::Object(out)
}

/// One line of a Centrifugo frame as the scenarios read frames: a `pub` push is a message;
/// a reply becomes v1's `{"id", "ok"}` or `{"id", "error": {"code": "<number>"}}`.
fn decode_centrifugo(line: &str) -> anyhow::Result<Incoming> {
    if let Ok(light) = serde_json::from_str::<LightCfPush>(line) {
        return Ok(Incoming::Message(MessageInfo {
            channel: light.push.channel.into_owned(),
            offset: light.push.publication.offset,
            sent_ns: light.push.publication.data.and_then(|d| d.t),
        }));
    }
    let mut frame: Value = serde_json::from_str(line)?;
    let Some(object) = frame.as_object_mut() else {
        bail!("a frame that is not an object");
    };
    if object.contains_key("push") {
        return Ok(Incoming::Frame(frame));
    }
    let id = object.remove("id").unwrap_or(Value::Null);
    if let Some(error) = object.remove("error") {
        return Ok(Incoming::Frame(json!({
            "id": id,
            "error": { "code": error["code"].to_string(), "message": error["message"] },
        })));
    }
    let ok = object.values().next().cloned().unwrap_or(json!({}));
    Ok(Incoming::Frame(json!({ "id": id, "ok": ok })))
}

/// Why a connect failed, as a short cause for the error table.
pub fn connect_cause(e: &anyhow::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.downcast_ref::<WsError>() {
        Some(WsError::Http(response)) => {
            return format!("connect_http_{}", response.status().as_u16());
        }
        Some(WsError::Io(io)) => return format!("connect_io_{:?}", io.kind()).to_lowercase(),
        Some(WsError::Protocol(_)) => return "connect_ws_protocol".into(),
        Some(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
            return "connect_ws_closed".into();
        }
        _ => {}
    }
    if let Some(closed) = e.downcast_ref::<ClosedBeforeWelcome>() {
        return format!("connect_close_{}", closed.0);
    }
    if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
        return "connect_timeout".into();
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return format!("connect_io_{:?}", io.kind()).to_lowercase();
    }
    "connect_other".into()
}

impl Dialer {
    /// Connects connection number `index` of `user` with `token` and waits for `welcome`; a
    /// `publisher` goes to the publisher nodes when there are any. The URL carries `user` for
    /// a load balancer that hashes on it.
    pub async fn connect(
        &self,
        index: usize,
        user: &str,
        token: &str,
        publisher: bool,
    ) -> anyhow::Result<Connection> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connect_inner(index, user, token, publisher),
        )
        .await?
    }

    async fn connect_inner(
        &self,
        index: usize,
        user: &str,
        token: &str,
        publisher: bool,
    ) -> anyhow::Result<Connection> {
        let routed;
        let base = match &self.route {
            _ if publisher && !self.publisher_urls.is_empty() => {
                &self.publisher_urls[index % self.publisher_urls.len()]
            }
            Some(route_base) => {
                routed = route(route_base, token).await?;
                &routed
            }
            None => &self.urls[index % self.urls.len()],
        };
        if self.protocol == Protocol::CentrifugoHttpStream {
            return self.connect_stream(base, user, token).await;
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = match self.protocol {
            // The token goes in `connect`; `user` stays for a balancer that hashes on it.
            Protocol::Centrifugo => format!("{base}{sep}user={user}"),
            _ => format!("{base}{sep}token={token}&user={user}"),
        };
        let mut request = url.as_str().into_client_request()?;
        if self.protocol == Protocol::V1 && self.encoding == Encoding::Msgpack {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                http::HeaderValue::from_static("v1.msgpack"),
            );
        }
        let uri = request.uri().clone();
        let host = uri.host().context("URL without host")?;
        let port = uri.port_u16().unwrap_or(80);
        let addr: SocketAddr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .context("host did not resolve")?;
        let stream = match &self.source {
            Some(source) => source.connect(addr).await?,
            None => new_socket(addr)?.connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(16 << 20));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        let mut conn = Connection {
            link: Link::Ws(Box::new(ws)),
            protocol: self.protocol,
            encoding: self.encoding,
            next_id: 0,
            pending: VecDeque::new(),
        };
        if self.protocol == Protocol::Centrifugo {
            let id = conn.id();
            conn.ws()?
                .send(Message::text(
                    json!({"id": id, "connect": {"token": token}}).to_string(),
                ))
                .await?;
            loop {
                match conn.next().await? {
                    Incoming::Frame(f) if f["id"] == id && f.get("ok").is_some() => {
                        return Ok(conn);
                    }
                    Incoming::Frame(f) if f["id"] == id => bail!("connect refused: {f}"),
                    Incoming::Frame(_) | Incoming::Message(_) => continue,
                    Incoming::Closed(code) => return Err(ClosedBeforeWelcome(code).into()),
                }
            }
        }
        loop {
            match conn.next().await? {
                Incoming::Frame(f) if f["op"] == "welcome" => return Ok(conn),
                Incoming::Frame(_) | Incoming::Message(_) => continue,
                Incoming::Closed(code) => return Err(ClosedBeforeWelcome(code).into()),
            }
        }
    }
}

impl Dialer {
    /// Opens `POST <base>` (Centrifugo's HTTP-streaming) with the connect command as its body
    /// and reads until the connect reply, which names the session for `/emulation`.
    async fn connect_stream(
        &self,
        base: &str,
        user: &str,
        token: &str,
    ) -> anyhow::Result<Connection> {
        use tokio::io::AsyncWriteExt;
        let uri: http::Uri = base.parse()?;
        let host = uri.authority().context("URL without host")?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let addr: SocketAddr = tokio::net::lookup_host((uri.host().unwrap_or("127.0.0.1"), port))
            .await?
            .next()
            .context("host did not resolve")?;
        let mut stream = match &self.source {
            Some(source) => source.connect(addr).await?,
            None => new_socket(addr)?.connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let body = json!({"id": 1, "connect": {"token": token}}).to_string();
        let request = format!(
            "POST {}?user={user} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            uri.path(),
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        let status = read_head(&mut stream, &mut raw).await?;
        if status != 200 {
            bail!("http_stream answered {status}");
        }
        let mut link = HttpStream {
            stream,
            raw,
            body: Vec::new(),
            post: None,
            addr,
            source: self.source.clone(),
            host,
            session: String::new(),
            node: String::new(),
        };
        loop {
            let Some(line) = link.line().await? else {
                return Err(ClosedBeforeWelcome(0).into());
            };
            let reply: Value = serde_json::from_str(&line)?;
            if reply["id"] == 1 {
                let connect = &reply["connect"];
                if connect.is_null() {
                    bail!("connect refused: {reply}");
                }
                link.session = connect["session"].as_str().unwrap_or_default().to_owned();
                link.node = connect["node"].as_str().unwrap_or_default().to_owned();
                return Ok(Connection {
                    link: Link::Stream(Box::new(link)),
                    protocol: self.protocol,
                    encoding: self.encoding,
                    next_id: 1,
                    pending: VecDeque::new(),
                });
            }
        }
    }
}

/// The server closed the socket (with this close code, 0 for none) before `welcome`.
#[derive(Debug, thiserror::Error)]
#[error("closed with {0} before welcome")]
struct ClosedBeforeWelcome(u16);

/// A client socket as lean as the server's: small buffers.
fn new_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let _ = socket.set_recv_buffer_size(64 * 1024);
    Ok(socket)
}

impl Connection {
    /// A fresh command id.
    pub fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// The WebSocket, when one carries the connection.
    fn ws(&mut self) -> anyhow::Result<&mut WebSocketStream<TcpStream>> {
        match &mut self.link {
            Link::Ws(ws) => Ok(ws),
            Link::Stream(_) => bail!("not a WebSocket"),
        }
    }

    /// Sends one command object.
    pub async fn send(&mut self, command: &Value) -> anyhow::Result<()> {
        let message = match (self.protocol, self.encoding) {
            (Protocol::Socketio, _) => Message::text(format!("42{}", json!(["cmd", command]))),
            (Protocol::V1, Encoding::Json) => Message::text(command.to_string()),
            (Protocol::V1, Encoding::Msgpack) => Message::binary(rmp_serde::to_vec_named(command)?),
            (Protocol::Centrifugo, _) => Message::text(to_centrifugo(command).to_string()),
            (Protocol::CentrifugoHttpStream, _) => {
                let line = to_centrifugo(command).to_string();
                return match &mut self.link {
                    Link::Stream(link) => link.post(&line).await,
                    Link::Ws(_) => bail!("not a stream"),
                };
            }
        };
        self.ws()?.send(message).await?;
        Ok(())
    }

    /// Sends a command and waits for its reply; returns the `ok` body. Pushes read meanwhile
    /// are dropped, so use it only before the measured phase.
    pub async fn request(&mut self, mut command: Value) -> anyhow::Result<Value> {
        let id = self.id();
        command["id"] = json!(id);
        self.send(&command).await?;
        loop {
            match self.next().await? {
                Incoming::Frame(f) if f["id"] == id => {
                    if let Some(error) = f.get("error") {
                        bail!("{} failed: {error}", command["op"]);
                    }
                    return Ok(f["ok"].clone());
                }
                Incoming::Frame(_) | Incoming::Message(_) => {}
                Incoming::Closed(code) => bail!("closed with {code}"),
            }
        }
    }

    /// The next reply or push (pings are answered on the way).
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        loop {
            if let Some(incoming) = self.pending.pop_front() {
                return Ok(incoming);
            }
            if let Link::Stream(link) = &mut self.link {
                let Some(line) = link.line().await? else {
                    return Ok(Incoming::Closed(0));
                };
                if line == "{}" {
                    // The server's ping: answered through /emulation.
                    link.post("{}").await?;
                    continue;
                }
                return decode_centrifugo(&line);
            }
            let message = match self.ws()?.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(Incoming::Closed(0)),
            };
            match message {
                Message::Text(text) => match self.protocol {
                    Protocol::V1 => return decode_json(&text),
                    Protocol::Centrifugo | Protocol::CentrifugoHttpStream => {
                        for line in text.split('\n') {
                            if line == "{}" {
                                // The server's ping: answered in kind.
                                self.ws()?.send(Message::text("{}")).await?;
                            } else {
                                self.pending.push_back(decode_centrifugo(line)?);
                            }
                        }
                    }
                    Protocol::Socketio => {
                        if let Some(event) = text.strip_prefix("42") {
                            let (_, body): (&str, &serde_json::value::RawValue) =
                                serde_json::from_str(event)?;
                            return decode_json(body.get());
                        } else if text.as_str() == "2" {
                            self.ws()?.send(Message::text("3")).await?;
                        } else if text.starts_with('0') {
                            self.ws()?.send(Message::text("40")).await?;
                        }
                    }
                },
                Message::Binary(bytes) => {
                    if let Ok(light) = rmp_serde::from_slice::<LightPush>(&bytes)
                        && let Some(message) = light.message()
                    {
                        return Ok(Incoming::Message(message));
                    }
                    return Ok(from_value(rmp_serde::from_slice(&bytes)?));
                }
                Message::Close(frame) => {
                    return Ok(Incoming::Closed(frame.map_or(0, |f| u16::from(f.code))));
                }
                _ => {}
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        if let Link::Ws(ws) = &mut self.link {
            let _ = WebSocketStream::close(ws, None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_pushes_are_read_lightly_and_others_fully() {
        let push = r#"{"op":"message","channel":"room:a","offset":7,"epoch":"e","from":"x","data":{"t":42,"p":"xx"},"ts":1}"#;
        match decode_json(push).unwrap() {
            Incoming::Message(m) => assert_eq!(
                m,
                MessageInfo {
                    channel: "room:a".into(),
                    offset: 7,
                    sent_ns: Some(42)
                }
            ),
            other => panic!("{other:?}"),
        }
        let escaped = r#"{"op":"message","channel":"room:a","offset":1,"data":"plain"}"#;
        assert!(
            matches!(decode_json(escaped).unwrap(), Incoming::Message(m) if m.channel == "room:a" && m.sent_ns.is_none())
        );
        let reply = r#"{"id":3,"error":{"code":"rate_limited","message":"m"}}"#;
        assert!(
            matches!(decode_json(reply).unwrap(), Incoming::Frame(f) if f["error"]["code"] == "rate_limited")
        );
        let packed =
            rmp_serde::to_vec_named(&serde_json::from_str::<Value>(push).unwrap()).unwrap();
        let light: LightPush = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(light.message().unwrap().offset, 7);
    }

    #[test]
    fn centrifugo_frames_translate_both_ways() {
        let subscribe = json!({"id": 3, "op": "subscribe", "channel": "bench:a", "since": 4, "join_leave": "each"});
        assert_eq!(
            to_centrifugo(&subscribe),
            json!({"id": 3, "subscribe": {"channel": "bench:a", "recover": true, "offset": 4, "join_leave": true}})
        );
        let push = r#"{"push":{"channel":"bench:a","pub":{"data":{"t":42,"p":"x"},"offset":9,"info":{"user":"u","client":""}}}}"#;
        assert!(matches!(
            decode_centrifugo(push).unwrap(),
            Incoming::Message(m) if m == MessageInfo { channel: "bench:a".into(), offset: 9, sent_ns: Some(42) }
        ));
        let reply = r#"{"id":3,"subscribe":{"recoverable":true,"epoch":"e","offset":12}}"#;
        assert!(
            matches!(decode_centrifugo(reply).unwrap(), Incoming::Frame(f) if f == json!({"id": 3, "ok": {"recoverable": true, "epoch": "e", "offset": 12}}))
        );
        let error = r#"{"id":4,"error":{"code":111,"message":"slow down","temporary":true}}"#;
        assert!(
            matches!(decode_centrifugo(error).unwrap(), Incoming::Frame(f) if f["error"]["code"] == "111")
        );
        let join = r#"{"push":{"channel":"bench:a","join":{"info":{"user":"u","client":"u"}}}}"#;
        assert!(
            matches!(decode_centrifugo(join).unwrap(), Incoming::Frame(f) if f["push"]["join"]["info"]["user"] == "u")
        );
    }

    #[test]
    fn minted_tokens_verify_with_the_secret_and_grant_bench_channels() {
        let token = mint("s3cret-s3cret-s3cret-s3cret-s3cret", "lg-user7").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "lg-user7");
        assert_eq!(data.claims["channels"], json!(["bench:*"]));
        assert!(
            jsonwebtoken::decode::<Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"another"),
                &validation
            )
            .is_err()
        );
    }

    #[test]
    fn source_port_slices_are_disjoint_and_cycle_per_destination() {
        let here: IpAddr = "127.0.0.2".parse().unwrap();
        let a = SourceAddr::new(here, 0, 2);
        let b = SourceAddr::new(here, 1, 2);
        assert!(a.high < b.low && a.low >= 1024);
        let x: SocketAddr = "127.0.0.1:8401".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:8402".parse().unwrap();
        assert_eq!(a.take(x), a.low);
        assert_eq!(a.take(x), a.low + 1);
        // Each destination has its own sequence: the same port serves both.
        assert_eq!(a.take(y), a.low);
        let one = SourceAddr::new(here, 0, 1);
        assert_eq!((one.low, one.high), (1024, 65_535));
        let last = SourceAddr::new(here, 5, 3);
        assert_eq!((last.low, last.high), (44_032, 65_535));
    }
}
