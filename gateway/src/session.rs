//! One connection's life, in one task that owns the socket.
//!
//! The task waits on three things at once: a frame from the client, its outbound queue, and
//! one timer (next ping, idle deadline, token expiry). Whatever it handles, it then drains the
//! queue: it feeds many frames and flushes once. Writes race the close request, so a stalled
//! client cannot keep its task from noticing `slow_consumer`, a drain or a kick.

use crate::acl::{Action, PERSONAL_PREFIX};
use crate::auth::Claims;
use crate::conn::{Conn, Outbound};
use crate::limits::{MinuteCounter, TokenBucket};
use crate::metrics::{self, metrics};
use crate::node::Node;
use crate::protocol::{
    CloseReason, Command, CommandError, Encoding, ErrorCode, Op, decode, disconnect_frame,
    error_frame, frame_bytes, history_reply_frame, members_json, message_frame, reply_frame,
    to_message, welcome_frame,
};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use fanout::{BrokerError, ControlEvent, HistoryQuery, PublishRequest, RecoveryOutcome};
use futures_util::SinkExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::sleep_until;

/// Most queued items written per flush.
const BATCH: usize = 64;
/// How long the server waits to deliver `disconnect` and the close frame, and then for the
/// client's close reply.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a connection registered in the hub until dropped (also when an upgrade fails).
pub struct Registration {
    node: Arc<Node>,
    conn: Arc<Conn>,
}

impl Registration {
    /// Wraps a connection already added with `Hub::add_connection`.
    pub fn new(node: Arc<Node>, conn: Arc<Conn>) -> Self {
        node.track_session(true);
        Self { node, conn }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.hub.remove_connection(&self.conn);
        self.node.track_session(false);
    }
}

/// How a session ended.
enum End {
    /// The server closes, with this reason.
    Close(CloseReason),
    /// The client closed or the socket failed.
    Gone,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Per-connection state that only the session task touches.
struct Session {
    node: Arc<Node>,
    conn: Arc<Conn>,
    name: Option<String>,
    patterns: Vec<String>,
    /// When the token expires (leeway included), on the monotonic clock.
    expires_at: Instant,
    /// Subscribed channels; the personal channel first.
    subs: Vec<Arc<str>>,
    bucket: TokenBucket,
    rate_limited: MinuteCounter,
    bad_frames: MinuteCounter,
    last_seen: Instant,
    next_ping: Instant,
}

/// Runs a connection from its first frame to its close.
pub async fn run(mut ws: WebSocket, node: Arc<Node>, registration: Registration, claims: Claims) {
    let conn = registration.conn.clone();
    let now = Instant::now();
    let limits = &node.config.limits;
    let mut session = Session {
        expires_at: expiry_instant(&node, claims.exp),
        name: claims.name,
        patterns: claims.channels,
        subs: Vec::new(),
        bucket: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
        rate_limited: MinuteCounter::new(now),
        bad_frames: MinuteCounter::new(now),
        last_seen: now,
        next_ping: now + limits.ping_interval,
        node: node.clone(),
        conn: conn.clone(),
    };
    metrics().handshakes_ok.increment(1);
    // The heavy futures (command handling, writing, closing) are boxed so that they take
    // memory only while they run: an idle connection's task holds just the wait loop.
    let end = session.serve(&mut ws).await;
    Box::pin(session.leave_all()).await;
    // Closing: no longer one of the user's connections (limits, /api/disconnect), though the
    // drain still waits for the close handshake below.
    node.hub.remove_connection(&conn);
    if let End::Close(reason) = end {
        Box::pin(close(&mut ws, conn.encoding, reason)).await;
    }
    drop(registration);
}

fn expiry_instant(node: &Node, exp: u64) -> Instant {
    let leeway = node.config.jwt.leeway.as_secs();
    let left = (exp + leeway).saturating_sub(unix_secs());
    Instant::now() + Duration::from_secs(left)
}

/// Sends `disconnect` and the close frame, then waits briefly for the client's close reply.
async fn close(ws: &mut WebSocket, encoding: Encoding, reason: CloseReason) {
    metrics::disconnect(reason.code());
    let frames = async {
        ws.feed(to_message(encoding, disconnect_frame(encoding, reason)))
            .await?;
        ws.send(Message::Close(Some(CloseFrame {
            code: reason.close_code(),
            reason: Utf8Bytes::from_static(""),
        })))
        .await
    };
    if let Ok(Ok(())) = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, frames).await {
        let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, async {
            while let Some(Ok(msg)) = ws.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

impl Session {
    async fn serve(&mut self, ws: &mut WebSocket) -> End {
        let encoding = self.conn.encoding;
        let node = self.node.clone();
        self.conn.push_frame(welcome_frame(
            encoding,
            &self.conn.user,
            &node.config.node_id,
            &format!("{}-{:x}", node.config.node_id, self.conn.id),
            node.config.limits.ping_interval.as_secs(),
        ));
        let personal: Arc<str> = format!("{PERSONAL_PREFIX}{}", self.conn.user).into();
        if let Err(e) = Box::pin(self.join(&personal)).await {
            tracing::warn!(error = %e, "personal channel subscribe failed");
            return End::Close(CloseReason::Internal);
        }
        // One timer, re-armed lazily: only when the deadline comes earlier than the armed one.
        // A later deadline (the client sent a frame) needs nothing: the timer fires early, and
        // `on_timer` finds nothing due and re-arms. Re-arming touches tokio's timer wheel, which
        // is not free on every delivery.
        let mut armed = self.deadline();
        let sleep = sleep_until(armed.into());
        tokio::pin!(sleep);
        let mut batch: Vec<Outbound> = Vec::new();
        loop {
            if let Err(end) = Box::pin(self.write_pending(ws, &mut batch)).await {
                return end;
            }
            let due = self.deadline();
            if due < armed || sleep.is_elapsed() {
                armed = due;
                sleep.as_mut().reset(due.into());
            }
            tokio::select! {
                _ = self.conn.wait() => {}
                frame = ws.recv() => {
                    if let Some(end) = Box::pin(self.on_frame(frame)).await {
                        return end;
                    }
                }
                _ = &mut sleep => {
                    if let Some(end) = Box::pin(self.on_timer(ws)).await {
                        return end;
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        let idle = self.last_seen + self.node.config.limits.idle_timeout;
        self.next_ping.min(idle).min(self.expires_at)
    }

    async fn on_timer(&mut self, ws: &mut WebSocket) -> Option<End> {
        let now = Instant::now();
        if now >= self.expires_at {
            return Some(End::Close(CloseReason::TokenExpired));
        }
        if now >= self.last_seen + self.node.config.limits.idle_timeout {
            return Some(End::Close(CloseReason::HeartbeatTimeout));
        }
        if now >= self.next_ping {
            self.next_ping = now + self.node.config.limits.ping_interval;
            if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                return Some(End::Gone);
            }
        }
        None
    }

    /// Writes everything queued, racing the close request.
    async fn write_pending(
        &self,
        ws: &mut WebSocket,
        batch: &mut Vec<Outbound>,
    ) -> Result<(), End> {
        let encoding = self.conn.encoding;
        loop {
            if let Some(reason) = self.conn.take_batch(batch, BATCH) {
                return Err(End::Close(reason));
            }
            if batch.is_empty() {
                return Ok(());
            }
            let mut oldest: Option<Instant> = None;
            let mut bytes = 0u64;
            let write = async {
                for item in batch.drain(..) {
                    let message = match item {
                        Outbound::Frame(frame) => to_message(encoding, frame),
                        Outbound::Message(p) => {
                            oldest.get_or_insert(p.accepted_at);
                            message_frame(encoding, &p)
                        }
                    };
                    bytes += frame_bytes(&message).len() as u64;
                    ws.feed(message).await?;
                }
                ws.flush().await
            };
            let conn = &self.conn;
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
                reason = closed => return Err(End::Close(reason)),
            }
            metrics().bytes_out.increment(bytes);
            if let Some(at) = oldest {
                metrics()
                    .publish_to_write
                    .record(at.elapsed().as_secs_f64());
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Option<End> {
        let message = match frame {
            None => return Some(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(e)) => return Some(read_error(e)),
        };
        self.last_seen = Instant::now();
        let encoding = self.conn.encoding;
        let payload: &[u8] = match (&message, encoding) {
            (Message::Text(t), Encoding::Json) => t.as_bytes(),
            (Message::Binary(b), Encoding::MsgPack) => b,
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
            (Message::Close(_), _) => return Some(End::Gone),
            (Message::Ping(_) | Message::Pong(_), _) => return None,
        };
        metrics().bytes_in.increment(payload.len() as u64);
        match decode(encoding, payload) {
            Ok(command) => self.handle(command).await,
            Err(error) => self.reject(error),
        }
    }

    fn reject(&mut self, error: CommandError) -> Option<End> {
        self.conn.push_frame(error_frame(
            self.conn.encoding,
            error.id,
            error.code,
            &error.message,
        ));
        if error.malformed {
            let count = self.bad_frames.record(Instant::now());
            if count > self.node.config.limits.max_bad_frames_per_minute {
                return Some(End::Close(CloseReason::Policy));
            }
        }
        None
    }

    fn reply<T: serde::Serialize>(&self, id: i64, ok: &T) {
        self.conn
            .push_frame(reply_frame(self.conn.encoding, id, ok));
    }

    fn error(&self, id: i64, code: ErrorCode, message: &str) {
        self.conn
            .push_frame(error_frame(self.conn.encoding, id, code, message));
    }

    fn allowed(&self, channel: &str, action: Action) -> bool {
        self.node
            .acl
            .allows(&self.conn.user, &self.patterns, channel, action)
    }

    async fn handle(&mut self, Command { id, op }: Command) -> Option<End> {
        match op {
            Op::Subscribe {
                channel,
                since,
                epoch,
            } => return self.subscribe(id, channel, since, epoch).await,
            Op::Unsubscribe { channel } => {
                let Some(i) = self.subs.iter().position(|c| **c == *channel) else {
                    self.error(
                        id,
                        ErrorCode::NotSubscribed,
                        "not subscribed to this channel",
                    );
                    return None;
                };
                let channel = self.subs.swap_remove(i);
                self.leave(&channel).await;
                self.reply(id, &json!({}));
            }
            Op::Publish {
                channel,
                data,
                idem,
            } => return self.publish(id, channel, data, idem).await,
            Op::Presence { channel } => {
                if !self.allowed(&channel, Action::Subscribe) {
                    self.error(id, ErrorCode::Forbidden, "not allowed on this channel");
                } else if !self.node.acl.presence_enabled(&channel) {
                    self.error(
                        id,
                        ErrorCode::BadRequest,
                        "presence is not enabled for this channel's namespace",
                    );
                } else {
                    match self.node.presence.members(&channel).await {
                        Ok(members) => {
                            self.reply(id, &json!({ "members": members_json(&members) }))
                        }
                        Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
                    }
                }
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                if !self.allowed(&channel, Action::Subscribe) {
                    self.error(id, ErrorCode::Forbidden, "not allowed on this channel");
                    return None;
                }
                let query = HistoryQuery {
                    since,
                    limit: limit as usize,
                };
                match self.node.broker.history(&channel, query).await {
                    Ok(page) => self.conn.push_frame(history_reply_frame(
                        self.conn.encoding,
                        id,
                        &page.publications,
                        page.offset,
                        &page.epoch,
                    )),
                    Err(e) => self.broker_error(id, e),
                }
            }
            Op::Refresh { token } => match self.node.verifier.verify(&token) {
                Err(e) => self.error(id, ErrorCode::Unauthorized, &e.to_string()),
                Ok(claims) if *claims.sub != *self.conn.user => self.error(
                    id,
                    ErrorCode::Forbidden,
                    "the new token is for another user",
                ),
                Ok(claims) => {
                    self.expires_at = expiry_instant(&self.node, claims.exp);
                    self.patterns = claims.channels;
                    if claims.name.is_some() {
                        self.name = claims.name;
                    }
                    self.reply(id, &json!({ "exp": claims.exp }));
                }
            },
            Op::Ping => self.reply(id, &json!({})),
        }
        None
    }

    fn broker_error(&self, id: i64, error: BrokerError) {
        self.error(id, ErrorCode::from(&error), &error.to_string());
    }

    async fn publish(
        &mut self,
        id: i64,
        channel: String,
        data: serde_json::Value,
        idem: Option<String>,
    ) -> Option<End> {
        if !self.allowed(&channel, Action::Publish) {
            self.error(
                id,
                ErrorCode::Forbidden,
                "not allowed to publish on this channel",
            );
            return None;
        }
        let now = Instant::now();
        if !self.bucket.try_take(now) {
            self.error(id, ErrorCode::RateLimited, "publish rate limit exceeded");
            let count = self.rate_limited.record(now);
            if count > self.node.config.limits.max_rate_limited_per_minute {
                return Some(End::Close(CloseReason::RateLimited));
            }
            return None;
        }
        let request = PublishRequest {
            channel: channel.into(),
            from: self.conn.user.clone(),
            data,
            idem,
        };
        match self.node.broker.publish(request).await {
            Ok(outcome) => {
                if !outcome.duplicate {
                    metrics().published.increment(1);
                }
                self.reply(id, &json!({ "offset": outcome.offset }));
            }
            Err(e) => self.broker_error(id, e),
        }
        None
    }

    async fn subscribe(
        &mut self,
        id: i64,
        channel: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Option<End> {
        if !self.allowed(&channel, Action::Subscribe) {
            self.error(
                id,
                ErrorCode::Forbidden,
                "not allowed to subscribe to this channel",
            );
            return None;
        }
        let existing = self.subs.iter().find(|c| ***c == *channel).cloned();
        let resubscribe = existing.is_some();
        let channel: Arc<str> = match existing {
            Some(channel) => channel,
            None => {
                let max = self.node.config.limits.max_subscriptions;
                if self.subs.len().saturating_sub(1) >= max {
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        &format!("subscription limit reached ({max} per connection)"),
                    );
                    return None;
                }
                let channel: Arc<str> = channel.into();
                // Buffer live publications before the hub can deliver any (join registers).
                self.conn.begin_recovery(channel.clone());
                if let Err(e) = self.join(&channel).await {
                    self.conn.abort_recovery(&channel);
                    self.broker_error(id, e);
                    return None;
                }
                channel
            }
        };
        if resubscribe {
            self.conn.begin_recovery(channel.clone());
        }
        let broker = &self.node.broker;
        let query = HistoryQuery {
            since: since.map(|s| s.min(u64::MAX - 1)),
            limit: if since.is_some() {
                broker.history_capacity()
            } else {
                0
            },
        };
        let page = match broker.history(&channel, query).await {
            Ok(page) => page,
            Err(e) => {
                self.conn.abort_recovery(&channel);
                self.broker_error(id, e);
                return None;
            }
        };
        let latest = page.offset;
        let outcome = match since {
            Some(since) => RecoveryOutcome::from_page(page, since, epoch.as_deref()),
            None => RecoveryOutcome {
                publications: Vec::new(),
                offset: page.offset,
                epoch: page.epoch,
                recovered: false,
            },
        };
        let reply = reply_frame(
            self.conn.encoding,
            id,
            &json!({
                "offset": outcome.offset,
                "epoch": &*outcome.epoch,
                "recovered": outcome.recovered,
            }),
        );
        self.conn
            .finish_recovery(&channel, reply, outcome.publications, latest);
        None
    }

    /// Adds this connection to `channel`: hub, broker interest, presence.
    async fn join(&mut self, channel: &Arc<str>) -> Result<(), BrokerError> {
        let node = self.node.clone();
        if node.hub.subscribe(channel, &self.conn) {
            if let Err(e) = node.broker.subscribe_node(channel).await {
                node.hub.unsubscribe(channel, &self.conn);
                return Err(e);
            }
        }
        self.subs.push(channel.clone());
        if node.acl.presence_enabled(channel) {
            let first = node
                .presence
                .add(channel, &self.conn.user, self.name.as_deref())
                .await;
            self.announce(first, || ControlEvent::Join {
                channel: channel.clone(),
                user: self.conn.user.clone(),
            })
            .await;
        }
        Ok(())
    }

    /// Publishes the presence event when `changed` says the user's first connection arrived
    /// (or the last one left); presence failures are logged, never fatal to the session.
    async fn announce(
        &self,
        changed: Result<bool, presence::PresenceError>,
        event: impl FnOnce() -> ControlEvent,
    ) {
        match changed {
            Ok(true) => {
                if let Err(e) = self.node.broker.publish_control(event()).await {
                    tracing::warn!(error = %e, "presence event not published");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
    }

    /// Removes this connection from `channel` (already taken out of `subs`).
    async fn leave(&mut self, channel: &Arc<str>) {
        let node = self.node.clone();
        if node.hub.unsubscribe(channel, &self.conn) {
            if let Err(e) = node.broker.unsubscribe_node(channel).await {
                tracing::warn!(error = %e, "broker unsubscribe failed");
            }
        }
        if node.acl.presence_enabled(channel) {
            let last = node.presence.remove(channel, &self.conn.user).await;
            self.announce(last, || ControlEvent::Leave {
                channel: channel.clone(),
                user: self.conn.user.clone(),
            })
            .await;
        }
    }

    async fn leave_all(&mut self) {
        while let Some(channel) = self.subs.pop() {
            self.leave(&channel).await;
        }
    }
}

/// Maps a read error to how the session ends.
fn read_error(error: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let inner = error.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => End::Close(CloseReason::TooLarge),
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => End::Gone,
        Some(WsError::Protocol(_)) | Some(WsError::Utf8(_)) => End::Close(CloseReason::Policy),
        _ => End::Gone,
    }
}
