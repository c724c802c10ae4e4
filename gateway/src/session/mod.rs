//! One connection's life, in one task that owns the socket.
//!
//! The task waits on three things at once: a frame from the client, its outbound queue, and
//! one timer (next ping, idle deadline, token expiry). Whatever it handles, it then drains the
//! queue: it frames the whole batch into one buffer and writes it at once. Writes race the close request, so a stalled
//! client cannot keep its task from noticing `slow_consumer`, a drain or a kick.

pub mod connect;
pub(crate) mod proxied;

use crate::acl::{Action, JoinLeave, PERSONAL_PREFIX};
use crate::auth::Claims;
use crate::conn::{Conn, Outbound, Request};
use crate::limits::{MinuteCounter, TokenBucket};
use crate::metrics::{self, Metrics, metrics};
use crate::node::Node;
use crate::protocol::centrifuge::{self, Inbound};
use crate::protocol::{
    Answer, CloseReason, CommandError, Encoding, ErrorCode, UnsubscribeReason, answer_frame,
    decode, disconnect_frame, error_frame, publish_error_frame, put_frame, refresh_frame,
    server_subscribe_frame, to_message, unsubscribe_frame, welcome_frame,
};
use bytes::Bytes;
use fanout::BrokerError;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::io::DuplexStream;
use tokio::net::TcpStream;
use tokio::time::sleep_until;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::either::Either;

/// The stream under a session's WebSocket: the TCP stream itself when the node read the
/// handshake (`http::raw`, every first request on a connection), hyper's upgraded
/// connection when hyper served it (an upgrade after other requests on the connection, or
/// TLS), or an in-memory pipe to an HTTP-streaming or SSE transport (`http::emulation`).
pub type Socket = Either<TcpStream, Either<TokioIo<Upgraded>, DuplexStream>>;

/// The socket a session speaks through: tungstenite's stream over the connection.
pub(crate) type WebSocket = WebSocketStream<Socket>;

/// A write batch's allocation (items) kept for the next one; a burst's bigger one is freed.
const BATCH_KEEP: usize = 64;
/// How long the server waits to deliver `disconnect` and the close frame, and then for the
/// client's close reply.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a connection registered in the hub until dropped (also when an upgrade fails).
pub struct Registration {
    pub(crate) node: Arc<Node>,
    pub(crate) conn: Arc<Conn>,
}

impl Registration {
    /// Wraps a connection already added with `Hub::add_connection`.
    pub fn new(node: Arc<Node>, conn: Arc<Conn>) -> Self {
        node.track_session(true);
        metrics().connections[Metrics::protocol(conn.encoding)].increment(1.0);
        Self { node, conn }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.hub.remove_connection(&self.conn);
        self.node.track_session(false);
        metrics().connections[Metrics::protocol(self.conn.encoding)].decrement(1.0);
    }
}

/// How a session ended.
pub(crate) enum End {
    /// The server closes, with this reason.
    Close(CloseReason),
    /// The server closes while a batch was being written: the rest of it goes out first (as
    /// frames handed to tungstenite would), and the close frame follows whole frames.
    CloseAfter(CloseReason, Vec<u8>),
    /// The client sent a close frame: tungstenite has queued the reply (the same code, or
    /// 1002 for a code the RFC does not allow), which the session flushes.
    ClientClosed,
    /// The socket failed or ended without a close frame.
    Gone,
}

use fanout::util::unix_secs;

/// Per-connection state that only the session task touches.
pub(crate) struct Session {
    /// The node and the connection, which stays registered in the hub while this lives.
    pub(crate) reg: Registration,
    pub(crate) name: Option<String>,
    pub(crate) patterns: Vec<String>,
    /// When the token expires (leeway included), on the monotonic clock.
    pub(crate) expires_at: Instant,
    /// Subscribed channels; the personal channel first.
    pub(crate) subs: Vec<Arc<str>>,
    /// What only some connections have (subscription tokens, deltas): boxed, so that the
    /// others pay one pointer for it.
    extras: Option<Box<Extras>>,
    /// Publishes.
    pub(crate) bucket: TokenBucket,
    /// Subscribes and unsubscribes (each can make presence announce to a whole room).
    pub(crate) sub_bucket: TokenBucket,
    pub(crate) rate_limited: MinuteCounter,
    bad_frames: MinuteCounter,
    last_seen: Instant,
    next_ping: Instant,
    /// Centrifugo's protocol: the `connect` command being answered and the commands that
    /// came behind it in the same frame, until the session has started.
    pub(crate) first: Option<Box<FirstFrame>>,
}

/// A session's rarely used state (see `Session::extras`).
#[derive(Default)]
struct Extras {
    /// Channels granted by subscription tokens (Centrifugo's protocol), beyond `patterns`.
    grants: Vec<Grant>,
    /// Subscriptions with Fossil deltas (Centrifugo's protocol), each with the offset of the
    /// last publication written on it, which is the client's base for the next delta
    /// (`None`: the client's base is unknown, the next one goes whole).
    deltas: Vec<(Arc<str>, Option<u64>)>,
    /// What the proxies are told of the connection (when any proxy is configured).
    proxy: Option<ProxyState>,
}

/// What the proxies know of a connection: kept only when a proxy is configured.
#[derive(Debug, Default)]
pub struct ProxyState {
    /// `websocket`, `http_stream`, `sse`, `uni_http_stream` or `uni_sse`.
    pub transport: &'static str,
    /// The client's allow-listed request headers (`--proxy-headers`).
    pub forwarded: crate::proxy::Forwarded,
    /// The connect proxy's `meta`, sent back with every later request.
    pub meta: Option<Box<serde_json::value::RawValue>>,
    /// The connect proxy let the connection in: at its expiry the refresh proxy is asked.
    pub refresh: bool,
}

impl ProxyState {
    /// The state of a connection made by `headers` over `transport`, when `node` has a proxy.
    pub fn of(node: &Node, transport: &'static str, headers: &http::HeaderMap) -> Option<Self> {
        node.proxies.any().then(|| ProxyState {
            transport,
            forwarded: node.proxies.forwarded(headers),
            meta: None,
            refresh: false,
        })
    }
}

/// A channel granted by a subscription token, until it expires.
pub(crate) struct Grant {
    pub(crate) channel: Arc<str>,
    /// When the token expires (leeway included); `None`: it does not.
    pub(crate) expires_at: Option<Instant>,
    /// The token's `exp`, Unix seconds, as told to the client.
    pub(crate) exp: Option<u64>,
    /// Granted by the subscribe proxy (not a token): at its expiry the sub_refresh proxy is
    /// asked, and the client is never told to refresh it.
    pub(crate) proxied: bool,
}

/// A Centrifugo connection's first frame: its `connect` and what followed it.
pub(crate) struct FirstFrame {
    /// The `connect` command's id.
    pub(crate) connect_id: i64,
    /// The token's expiry, Unix seconds, which the client refreshes; `None`: the server
    /// does (a connection the connect proxy let in).
    pub(crate) exp: Option<u64>,
    /// The rest of the frame, in order.
    pub(crate) rest: Vec<Result<Inbound, CommandError>>,
    /// An HTTP-streaming or SSE connection: its session and node ids, for the connect reply.
    pub(crate) emulation: Option<centrifuge::Emulation>,
}

/// How a connection's task gets its socket from the handshake.
pub enum Handoff {
    /// hyper sends the `101`, then gives the connection up: an upgrade after other requests
    /// on the connection. Resolves to the connection once the `101` is out.
    Hyper(OnUpgrade),
    /// The node read the handshake itself (`http::raw`): the socket, the bytes read past the
    /// request, and the `101`, which the session sends in one write with its first frames.
    Raw {
        /// The connection.
        stream: TcpStream,
        /// Bytes that came after the request (a client may send frames before the `101`).
        read: Vec<u8>,
        /// The `101 Switching Protocols` answer, not yet sent.
        response: Vec<u8>,
    },
    /// An HTTP-streaming or SSE connection (Centrifugo's bidirectional emulation): the
    /// session's end of a pipe whose other end is a WebSocket client that carries the
    /// client's commands in and the session's frames out (see `http::emulation`).
    Emulated(DuplexStream),
}

impl Handoff {
    /// The session's WebSocket over the connection, once hyper has sent the `101` (at once
    /// when the node read the handshake), and the bytes to write before anything else (the
    /// `101` still to send, or none); `None` when the client left first.
    async fn websocket(self, config: WebSocketConfig) -> Option<(WebSocket, Vec<u8>)> {
        let (socket, read, preamble) = match self {
            Handoff::Raw {
                stream,
                read,
                response,
            } => (Either::Left(stream), read, response),
            Handoff::Emulated(pipe) => (Either::Right(Either::Right(pipe)), Vec::new(), Vec::new()),
            Handoff::Hyper(on_upgrade) => match on_upgrade.await {
                Ok(upgraded) => (
                    Either::Right(Either::Left(TokioIo::new(upgraded))),
                    Vec::new(),
                    Vec::new(),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return None;
                }
            },
        };
        let ws =
            WebSocketStream::from_partially_read(socket, read, Role::Server, Some(config)).await;
        Some((ws, preamble))
    }
}

/// What the handshake hands the connection's task: boxed, so that the task keeps one pointer
/// of it while it waits for hyper to give up the socket, and nothing once the session runs.
pub struct Start {
    /// How the socket comes.
    pub handoff: Handoff,
    /// The node and the connection, registered in the hub.
    pub registration: Registration,
    /// The token's claims.
    pub claims: Claims,
    /// tungstenite's settings for the socket.
    pub config: WebSocketConfig,
    /// What the proxies are told of the connection (when any proxy is configured).
    pub proxy: Option<ProxyState>,
}

/// Spawns the connection's task: it waits for the `101` to go out, then runs the session from
/// its first frame to its close.
pub fn spawn(start: Box<Start>) {
    tokio::spawn(connection(start));
}

/// The connection's task. Written as one `async` block that captures one pointer, with the
/// socket and the session as its locals, so that nothing is kept twice while it waits (an
/// `async fn` keeps its arguments beside the locals they are moved to, for its whole life),
/// and the task is only as big as the idle wait needs (see [`task_size`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its argument twice"
)]
fn connection(start: Box<Start>) -> impl Future<Output = ()> + Send {
    async move {
        // Nothing that only the start needs (claims, config) outlives the start, and the box
        // is freed once the socket is the session's.
        let Start {
            handoff,
            registration,
            claims,
            config,
            proxy,
        } = unbox(start);
        // Boxed so that its bytes are not a state of this task. When it gives nothing, the
        // client left before the `101` went out; dropping the registration unregisters it.
        let Some((mut ws, preamble)) = Box::pin(handoff.websocket(config)).await else {
            return;
        };
        let mut session = Session::new(registration, claims);
        session.set_proxy_state(proxy);
        metrics().handshakes_ok[Metrics::protocol(session.reg.conn.encoding)].increment(1);
        // The heavy futures (command handling, writing, closing) are boxed so that they take
        // memory only while they run: an idle connection's task holds just the wait loop.
        let end = session.serve(&mut ws, preamble).await;
        Box::pin(finish(&mut session, &mut ws, end)).await;
        drop(session);
    }
}

/// After the session: leaves every channel, then closes the socket as `end` says.
async fn finish(session: &mut Session, ws: &mut WebSocket, end: End) {
    session.leave_all().await;
    // Closing: no longer one of the user's connections (limits, /api/disconnect), though
    // the drain still waits for the close handshake below (the session, dropped last,
    // holds the registration the drain counts).
    session.reg.node.hub.remove_connection(&session.reg.conn);
    match end {
        End::Close(reason) => close(ws, session.reg.conn.encoding, reason, &[]).await,
        End::CloseAfter(reason, rest) => {
            close(ws, session.reg.conn.encoding, reason, &rest).await;
        }
        // RFC 6455 §5.5.1: answer the client's close frame before dropping TCP, so that
        // its close is clean (`wasClean`), not 1006.
        End::ClientClosed => {
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, ws.flush()).await;
        }
        End::Gone => {}
    }
}

/// Moves a value out of its box and frees the box now (a move out of `*boxed` would free it
/// only when `boxed` leaves scope: for a task's capture, at the task's end).
#[expect(clippy::boxed_local, reason = "taking the box is the point")]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Bytes of one connection's task as tokio allocates it: the future, plus tokio's header and
/// trailer, rounded up to the 128-byte alignment of its task cell. For the memory table in
/// ARCHITECTURE.md and the unit test that keeps it from growing unnoticed.
pub fn task_size() -> usize {
    fn future_size<A, F: Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    // tokio's task cell: a 32-byte header, the core (scheduler handle, task id, the future's
    // stage) and a 48-byte trailer, aligned to 128 bytes on x86_64.
    let core = 8 + 8 + future_size(connection) + 8;
    (32 + core + 48).next_multiple_of(128)
}

/// A connection's id as clients see it (see [`Session::client_id`]).
pub(crate) fn client_id(node: &Node, conn: u64) -> String {
    format!("{}-{:x}", node.config.node_id, conn)
}

/// How far away "never" is for a connection's expiry (a server API `refresh` without
/// `expire_at`): a hundred years.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// When `exp` (Unix seconds, from a token or a backend) comes, leeway included, on the
/// monotonic clock; at most [`NEVER`] away (an `exp` near `u64::MAX` would overflow).
pub(crate) fn expiry_instant(node: &Node, exp: u64) -> Instant {
    let leeway = node.config.jwt.leeway.as_secs();
    let left = exp.saturating_add(leeway).saturating_sub(unix_secs());
    Instant::now() + Duration::from_secs(left).min(NEVER)
}

/// Sends the `rest` of a batch cut short, `disconnect` and the close frame, then waits
/// briefly for the client's close reply.
async fn close(ws: &mut WebSocket, encoding: Encoding, reason: CloseReason, rest: &[u8]) {
    metrics::disconnect(reason.code());
    let frames = async {
        if !rest.is_empty() {
            // After whatever tungstenite still holds, which was queued before `rest`.
            ws.flush().await?;
            ws.get_mut().write_all(rest).await?;
        }
        // Centrifugo's protocol says it all in the close frame (its SDKs read the code and
        // the reason); v1 sends the `disconnect` push first.
        let (code, text) = if encoding.is_centrifuge() {
            centrifuge::close_code(reason)
        } else {
            ws.feed(to_message(encoding, disconnect_frame(encoding, reason)))
                .await?;
            (reason.close_code(), "")
        };
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(text),
        })))
        .await
    };
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, frames).await {
        let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
            while let Some(Ok(msg)) = ws.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

impl Session {
    fn new(reg: Registration, claims: Claims) -> Self {
        let now = Instant::now();
        let limits = &reg.node.config.limits;
        Self {
            expires_at: expiry_instant(&reg.node, claims.exp),
            name: claims.name,
            patterns: claims.channels,
            subs: Vec::new(),
            extras: None,
            bucket: TokenBucket::new(limits.publish_burst, now),
            sub_bucket: TokenBucket::new(limits.subscribe_burst, now),
            rate_limited: MinuteCounter::new(now),
            bad_frames: MinuteCounter::new(now),
            last_seen: now,
            next_ping: now + limits.ping_interval,
            first: None,
            reg,
        }
    }

    /// Channels granted by subscription tokens (Centrifugo's protocol), beyond `patterns`.
    pub(crate) fn grants(&self) -> &[Grant] {
        self.extras.as_deref().map_or(&[], |e| &e.grants)
    }

    /// Changes the grants.
    pub(crate) fn grants_mut(&mut self) -> &mut Vec<Grant> {
        &mut self.extras.get_or_insert_with(Box::default).grants
    }

    /// Records whether `channel`'s subscription has deltas, and if so, the offset of the last
    /// publication the client has there (`base`, from the subscribe reply).
    pub(crate) fn set_delta(&mut self, channel: &Arc<str>, delta: Option<Option<u64>>) {
        if delta.is_none() && self.extras.is_none() {
            return;
        }
        let deltas = &mut self.extras.get_or_insert_with(Box::default).deltas;
        deltas.retain(|(c, _)| c != channel);
        if let Some(base) = delta {
            deltas.push((channel.clone(), base));
        }
    }

    /// The connection's id as clients see it (v1's `welcome.session`, Centrifugo's `client`).
    pub(crate) fn client_id(&self) -> String {
        client_id(&self.reg.node, self.reg.conn.id)
    }

    /// Keeps what the proxies are told of the connection.
    pub(crate) fn set_proxy_state(&mut self, state: Option<ProxyState>) {
        if state.is_some() {
            self.extras.get_or_insert_with(Box::default).proxy = state;
        }
    }

    /// What the proxies are told of the connection.
    pub(crate) fn proxy_state(&self) -> Option<&ProxyState> {
        self.extras.as_deref().and_then(|e| e.proxy.as_ref())
    }

    /// The connection's allow-listed request headers, for a proxy call.
    pub(crate) fn forwarded(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        self.proxy_state().map_or(&[], |p| &p.forwarded)
    }

    /// What every proxy request says of this connection; `client` is [`Session::client_id`].
    pub(crate) fn proxy_client<'a>(&'a self, client: &'a str) -> crate::proxy::wire::Client<'a> {
        let state = self.proxy_state();
        crate::proxy::wire::Client {
            client,
            transport: state.map_or("websocket", |s| s.transport),
            protocol: crate::proxy::protocol_name(self.reg.conn.encoding),
            encoding: "json",
            user: Some(&self.reg.conn.user),
            meta: state.and_then(|s| s.meta.as_deref()),
        }
    }

    /// [`Session::start`], then its first write: `preamble` (the `101` when the node read the
    /// handshake) and `welcome` in one write. The `101` goes out before anything else, a
    /// close frame included.
    async fn open(&mut self, ws: &mut WebSocket, preamble: Vec<u8>) -> Result<(), End> {
        match self.start().await {
            Ok(()) => self.write_batches(ws, &mut VecDeque::new(), preamble).await,
            Err(End::Close(reason)) if !preamble.is_empty() => {
                Err(End::CloseAfter(reason, preamble))
            }
            Err(End::CloseAfter(reason, rest)) => {
                let mut out = preamble;
                out.extend_from_slice(&rest);
                Err(End::CloseAfter(reason, out))
            }
            Err(end) => Err(end),
        }
    }

    /// Sends `welcome` and joins the personal channel.
    async fn start(&mut self) -> Result<(), End> {
        let conn = &self.reg.conn;
        let config = &self.reg.node.config;
        let personal: Arc<str> = format!("{PERSONAL_PREFIX}{}", conn.user).into();
        let client = self.client_id();
        match self.first.as_ref() {
            Some(first) => conn.push_frame(centrifuge::connect_reply(
                conn.encoding,
                first.connect_id,
                &client,
                config.limits.ping_interval.as_secs(),
                first.exp,
                &personal,
                first.emulation.as_ref(),
            )),
            None => conn.push_frame(welcome_frame(
                conn.encoding,
                &conn.user,
                &config.node_id,
                &client,
                config.limits.ping_interval.as_secs(),
            )),
        }
        if let Err(e) = self.join(personal, None).await {
            tracing::warn!(error = %e, "personal channel subscribe failed");
            return Err(End::Close(CloseReason::Internal));
        }
        // The client's idle time counts from here: a join slowed by a busy backend (Redis
        // under a connect burst) is not the client's silence.
        self.last_seen = Instant::now();
        self.next_ping = self.last_seen + self.reg.node.config.limits.ping_interval;
        // Commands that came in the same frame as Centrifugo's `connect`, after its reply.
        if let Some(first) = self.first.take() {
            for inbound in first.rest {
                if let Some(end) = self.on_inbound(inbound).await {
                    return Err(end);
                }
            }
        }
        Ok(())
    }

    /// The wait loop. Not an `async fn`, whose arguments would be kept twice: the block
    /// captures the two references once. Every local here lives in the idle task, so anything
    /// else is done in the boxed futures it calls.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn serve<'a>(
        &'a mut self,
        ws: &'a mut WebSocket,
        preamble: Vec<u8>,
    ) -> impl Future<Output = End> + Send + 'a {
        async move {
            if let Err(end) = Box::pin(self.open(ws, preamble)).await {
                return end;
            }
            // One timer, re-armed lazily: only when the deadline comes earlier than the armed
            // one. A later deadline (the client sent a frame) needs nothing: the timer fires
            // early, and `on_timer` finds nothing due and re-arms. Re-arming touches tokio's
            // timer wheel, which is not free on every delivery.
            let sleep = sleep_until(self.deadline().into());
            tokio::pin!(sleep);
            let mut batch: VecDeque<Outbound> = VecDeque::new();
            loop {
                if self.reg.conn.requested() {
                    Box::pin(self.on_requests()).await;
                }
                if let Err(end) = Box::pin(self.write_pending(ws, &mut batch)).await {
                    return end;
                }
                {
                    let due = tokio::time::Instant::from(self.deadline());
                    if due < sleep.deadline() || sleep.is_elapsed() {
                        sleep.as_mut().reset(due);
                    }
                }
                tokio::select! {
                    _ = self.reg.conn.wait() => {}
                    frame = ws.next() => {
                        if let Some(end) = Box::pin(self.on_frame(frame)).await {
                            return end;
                        }
                    }
                    _ = &mut sleep => {
                        if let Some(end) = Box::pin(self.on_timer(ws, &mut batch)).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        let idle = self.last_seen + self.reg.node.config.limits.idle_timeout;
        let granted = self.grants().iter().filter_map(|g| g.expires_at).min();
        let deadline = self.next_ping.min(idle).min(self.expires_at);
        granted.map_or(deadline, |g| deadline.min(g))
    }

    async fn on_timer(
        &mut self,
        ws: &mut WebSocket,
        batch: &mut VecDeque<Outbound>,
    ) -> Option<End> {
        let now = Instant::now();
        if now >= self.expires_at
            && let Some(end) = self.refresh_by_proxy(now).await
        {
            return Some(end);
        }
        if now >= self.last_seen + self.reg.node.config.limits.idle_timeout {
            return Some(End::Close(CloseReason::HeartbeatTimeout));
        }
        if let Some(end) = self.end_expired_grants(now).await {
            return Some(end);
        }
        if now >= self.next_ping {
            self.next_ping = now + self.reg.node.config.limits.ping_interval;
            // Once per ping, the queue's allocation is given back if nothing is waiting: a
            // quiet connection keeps none, a busy one takes it again at its next delivery.
            if batch.is_empty() {
                *batch = VecDeque::new();
            }
            self.reg.conn.release_idle_queue();
            // Centrifugo's SDKs do not see WebSocket pings: theirs is an empty object, which
            // they answer with one.
            let encoding = self.reg.conn.encoding;
            let ping = if encoding.is_centrifuge() {
                centrifuge::ping(encoding)
            } else {
                Message::Ping(Bytes::new())
            };
            if ws.send(ping).await.is_err() {
                return Some(End::Gone);
            }
        }
        None
    }

    /// Writes everything queued, racing the close request.
    async fn write_pending(
        &mut self,
        ws: &mut WebSocket,
        batch: &mut VecDeque<Outbound>,
    ) -> Result<(), End> {
        self.write_batches(ws, batch, Vec::new()).await
    }

    /// [`Self::write_pending`], with `preamble` (the `101`'s bytes) written before the first
    /// batch, in the same write.
    async fn write_batches(
        &mut self,
        ws: &mut WebSocket,
        batch: &mut VecDeque<Outbound>,
        mut preamble: Vec<u8>,
    ) -> Result<(), End> {
        let encoding = self.reg.conn.encoding;
        loop {
            if let Some(reason) = self.reg.conn.take_batch(batch) {
                return Err(if preamble.is_empty() {
                    End::Close(reason)
                } else {
                    End::CloseAfter(reason, preamble)
                });
            }
            if batch.is_empty() && preamble.is_empty() {
                return Ok(());
            }
            let mut oldest: Option<Instant> = None;
            let mut bytes = 0u64;
            // The batch is framed into one buffer and written straight to the socket: a
            // publication's frame is built once (`Delivery::wire`) and each subscriber only
            // copies it, where tungstenite's `Sink` would frame every message again and take
            // and drop a reference to its payload per subscriber. tungstenite is flushed first,
            // so these bytes follow whole frames (an automatic pong it may hold goes out
            // before them); frames are self-delimiting and tungstenite keeps no count of what
            // was written, so its state stays right. Only data frames are written here, and
            // only while the session is open: pings and closes go through tungstenite.
            let mut out: Vec<u8> = std::mem::take(&mut preamble);
            for item in batch.drain(..) {
                match item {
                    Outbound::Frame(frame) => {
                        bytes += frame.len() as u64;
                        put_frame(&mut out, encoding, &frame);
                    }
                    Outbound::Message(d) => {
                        oldest.get_or_insert(d.received_at);
                        let base = self.extras.as_deref_mut().and_then(|e| {
                            e.deltas
                                .iter_mut()
                                .find(|(c, _)| *c == d.publication.channel)
                                .map(|(_, base)| base)
                        });
                        let made;
                        let wire = match base {
                            None => d.wire(encoding),
                            Some(base) => {
                                let at = base.replace(d.publication.offset);
                                match d.delta_wire(encoding, at) {
                                    Some(wire) => wire,
                                    None => {
                                        made = d.whole_for_delta(encoding);
                                        &made
                                    }
                                }
                            }
                        };
                        bytes += wire.payload as u64;
                        out.extend_from_slice(&wire.bytes);
                    }
                }
            }
            // What was written survives the write's cancellation: a close that wins the race
            // below sends the rest of a frame cut short before its own frames.
            let sent = AtomicUsize::new(0);
            let write = async {
                ws.flush().await.map_err(|_| ())?;
                let socket = ws.get_mut();
                while sent.load(Ordering::Relaxed) < out.len() {
                    match socket.write(&out[sent.load(Ordering::Relaxed)..]).await {
                        Ok(0) | Err(_) => return Err(()),
                        Ok(n) => _ = sent.fetch_add(n, Ordering::Relaxed),
                    }
                }
                Ok(())
            };
            let conn = &self.reg.conn;
            let closed = async {
                loop {
                    conn.wait().await;
                    if let Some(reason) = conn.closing() {
                        return reason;
                    }
                }
            };
            tokio::select! {
                result = write => {
                    if result.is_err() {
                        return Err(End::Gone);
                    }
                }
                reason = closed => {
                    out.drain(..sent.into_inner());
                    return Err(End::CloseAfter(reason, out));
                }
            }
            if batch.capacity() > BATCH_KEEP {
                // Give a burst's memory back.
                *batch = VecDeque::new();
            }
            metrics().bytes_out.increment(bytes);
            if let Some(at) = oldest {
                metrics::sample_publish_to_write(at);
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Option<End> {
        let message = match frame {
            None => return Some(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Some(read_error(e)),
        };
        self.last_seen = Instant::now();
        let encoding = self.reg.conn.encoding;
        let payload: &[u8] = match (&message, encoding) {
            (Message::Text(t), Encoding::Json | Encoding::CentrifugeJson) => t.as_bytes(),
            (Message::Binary(b), Encoding::MsgPack | Encoding::CentrifugeProtobuf) => b,
            // Centrifugo's protocol has one frame type per encoding; its servers close.
            (Message::Binary(_), Encoding::CentrifugeJson)
            | (Message::Text(_), Encoding::CentrifugeProtobuf) => {
                return Some(End::Close(CloseReason::Policy));
            }
            (Message::Text(_), Encoding::MsgPack) | (Message::Binary(_), Encoding::Json) => {
                let error = CommandError {
                    id: 0,
                    code: ErrorCode::BadRequest,
                    message: format!(
                        "{} frames only on a {} connection",
                        if encoding == Encoding::Json {
                            "text"
                        } else {
                            "binary"
                        },
                        encoding.subprotocol()
                    ),
                    malformed: true,
                };
                return self.reject(error);
            }
            (Message::Close(_), _) => return Some(End::ClientClosed),
            (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => return None,
        };
        metrics().bytes_in.increment(payload.len() as u64);
        if encoding.is_centrifuge() {
            let mut batch = Vec::new();
            if centrifuge::decode_frame(encoding, payload, &mut batch).is_err() {
                return Some(End::Close(CloseReason::Policy));
            }
            for inbound in batch {
                if let Some(end) = self.on_inbound(inbound).await {
                    return Some(end);
                }
            }
            return None;
        }
        match decode(encoding, payload) {
            Ok(command) => self.handle(command).await,
            Err(error) => self.reject(error),
        }
    }

    /// One command of a Centrifugo frame. A malformed one, or a second `connect`, ends the
    /// connection with 3501 (bad request), as the protocol's servers do; a bad field is an
    /// error reply.
    async fn on_inbound(&mut self, inbound: Result<Inbound, CommandError>) -> Option<End> {
        match inbound {
            Ok(Inbound::Pong) => None,
            Ok(Inbound::Command(command)) => Box::pin(self.handle(command)).await,
            Ok(Inbound::Connect { .. }) => Some(End::Close(CloseReason::Policy)),
            Err(error) if error.malformed => Some(End::Close(CloseReason::Policy)),
            Err(error) => self.reject(error),
        }
    }

    fn reject(&mut self, error: CommandError) -> Option<End> {
        self.reg.conn.push_frame(error_frame(
            self.reg.conn.encoding,
            error.id,
            error.code,
            &error.message,
        ));
        if error.malformed {
            let count = self.bad_frames.record(Instant::now());
            if count > self.reg.node.config.limits.max_bad_frames_per_minute {
                return Some(End::Close(CloseReason::Policy));
            }
        }
        None
    }

    /// Answers `rate_limited` to a command refused by a token bucket; past
    /// `--max-rate-limited-per-minute` such refusals, closes with 4003.
    pub(crate) fn rate_limited(&mut self, id: i64, what: &str, now: Instant) -> Option<End> {
        self.error(
            id,
            ErrorCode::RateLimited,
            &format!("{what} rate limit exceeded"),
        );
        let count = self.rate_limited.record(now);
        if count > self.reg.node.config.limits.max_rate_limited_per_minute {
            return Some(End::Close(CloseReason::RateLimited));
        }
        None
    }

    /// Takes a token from the subscribe/unsubscribe bucket.
    pub(crate) fn take_subscribe_token(&mut self, now: Instant) -> bool {
        let limits = &self.reg.node.config.limits;
        self.sub_bucket
            .try_take(now, limits.subscribe_rate, limits.subscribe_burst)
    }

    pub(crate) fn answer(&self, id: i64, answer: &Answer<'_>) {
        self.reg
            .conn
            .push_frame(answer_frame(self.reg.conn.encoding, id, answer));
    }

    pub(crate) fn error(&self, id: i64, code: ErrorCode, message: &str) {
        self.reg
            .conn
            .push_frame(error_frame(self.reg.conn.encoding, id, code, message));
    }

    pub(crate) fn broker_error(&self, id: i64, error: BrokerError) {
        self.error(id, ErrorCode::from(&error), &error.to_string());
    }

    /// The reply to a failed publish, saying whether the message may still be published.
    pub(crate) fn publish_error(&self, id: i64, error: &BrokerError) {
        self.reg
            .conn
            .push_frame(publish_error_frame(self.reg.conn.encoding, id, error));
    }

    pub(crate) fn allowed(&self, channel: &str, action: Action) -> bool {
        (action == Action::Subscribe && self.grants().iter().any(|g| *g.channel == *channel))
            || self
                .reg
                .node
                .acl
                .allows(&self.reg.conn.user, &self.patterns, channel, action)
    }

    /// Ends the subscriptions whose subscription token expired without a `sub_refresh`,
    /// each with an `unsubscribe` push that asks for a new token. A subscription the
    /// subscribe proxy granted is first asked of the sub_refresh proxy, when there is one.
    async fn end_expired_grants(&mut self, now: Instant) -> Option<End> {
        let expired: Vec<(Arc<str>, bool)> = self
            .grants()
            .iter()
            .filter(|g| g.expires_at.is_some_and(|at| at <= now))
            .map(|g| (g.channel.clone(), g.proxied))
            .collect();
        for (channel, proxied) in expired {
            if proxied && self.reg.node.proxies.has(crate::proxy::Kind::SubRefresh) {
                match self.sub_refresh_by_proxy(&channel).await {
                    proxied::Extended::Yes => continue,
                    proxied::Extended::No => {}
                    proxied::Extended::Disconnect(end) => return Some(end),
                }
            }
            self.grants_mut().retain(|g| g.channel != channel);
            if self.leave(&channel).await {
                self.reg.conn.push_frame(unsubscribe_frame(
                    self.reg.conn.encoding,
                    &channel,
                    UnsubscribeReason::Expired,
                ));
            }
        }
        None
    }

    /// Joins `channel` and lists it. Live publications are queued as they come, unless the
    /// caller put the connection in recovery for the channel first. `join_leave`: how the
    /// connection hears of presence changes (`None`: the namespace's default).
    pub(crate) async fn join(
        &mut self,
        channel: Arc<str>,
        join_leave: Option<JoinLeave>,
    ) -> Result<(), BrokerError> {
        self.reg
            .node
            .join(&self.reg.conn, &channel, self.name.as_deref(), join_leave)
            .await?;
        if self.subs.is_empty() {
            // Most connections stay on their personal channel alone: room for one, not four.
            self.subs.reserve_exact(1);
        }
        self.subs.push(channel);
        Ok(())
    }

    /// Leaves `channel` if subscribed; returns whether it was.
    pub(crate) async fn leave(&mut self, channel: &str) -> bool {
        let Some(i) = self.subs.iter().position(|c| **c == *channel) else {
            return false;
        };
        let channel = self.subs.swap_remove(i);
        self.set_delta(&channel, None);
        self.reg.node.leave(&self.reg.conn, &channel).await;
        true
    }

    async fn leave_all(&mut self) {
        while let Some(channel) = self.subs.pop() {
            self.reg.node.leave(&self.reg.conn, &channel).await;
        }
    }

    /// Carries out what the node asked, in order, each with its push.
    async fn on_requests(&mut self) {
        let encoding = self.reg.conn.encoding;
        for request in self.reg.conn.take_requests() {
            match request {
                Request::Unsubscribe(channel, reason) => {
                    if self.leave(&channel).await {
                        self.reg
                            .conn
                            .push_frame(unsubscribe_frame(encoding, &channel, reason));
                    }
                }
                Request::Subscribe(channel) => {
                    if self.subs.contains(&channel) {
                        continue;
                    }
                    // The push first: the channel's messages come after it.
                    self.reg
                        .conn
                        .push_frame(server_subscribe_frame(encoding, &channel));
                    if let Err(e) = self.join(channel.clone(), None).await {
                        tracing::warn!(error = %e, %channel, "server-side subscribe failed");
                        self.reg.conn.push_frame(unsubscribe_frame(
                            encoding,
                            &channel,
                            UnsubscribeReason::Server,
                        ));
                    }
                }
                Request::Refresh(expire_at) => {
                    self.expires_at = match expire_at {
                        Some(exp) => expiry_instant(&self.reg.node, exp),
                        None => Instant::now() + NEVER,
                    };
                    if let Some(frame) = refresh_frame(encoding, expire_at) {
                        self.reg.conn.push_frame(frame);
                    }
                }
            }
        }
    }
}

/// Maps a read error to how the session ends.
fn read_error(error: WsError) -> End {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match error {
        WsError::Capacity(_) => End::Close(CloseReason::TooLarge),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        WsError::Protocol(_) | WsError::Utf8(_) => End::Close(CloseReason::Policy),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_task_stays_within_its_budget() {
        // ARCHITECTURE.md's memory table counts on this: a change that makes the idle task
        // bigger shows here first. axum's upgrade task made it 2,048 bytes; each 128-byte step
        // more is 1.25 MiB per 10,000 idle connections.
        let size = super::task_size();
        assert!(size <= 1024, "connection task grew to {size} bytes");
    }
}
