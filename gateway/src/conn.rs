//! The part of a connection that others touch: its bounded outbound queue, its recovery
//! buffers and its close request. The session task owns the socket and drains the queue.
//!
//! The queue is a `VecDeque` behind a mutex that is never held across an `.await`; it and the
//! session's write batch swap one buffer, which a quiet connection gives back at its next ping
//! (a tokio `mpsc` would keep a block of 32 slots).

use crate::metrics::metrics;
use crate::protocol::{
    CloseReason, Encoding, UnsubscribeReason, frame_bytes, message_frame, put_frame,
};
use crate::workers::{self, WorkerId};
use bytes::Bytes;
use fanout::Publication;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Instant;

/// A publication as this node delivers it: the broker's [`Publication`] plus what only this
/// node needs, the instant it arrived here and its WebSocket frames, encoded at most once per
/// encoding and copied by every local subscriber into its write.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub publication: Arc<Publication>,
    /// When the node received it (publish-to-write latency starts here).
    pub received_at: Instant,
    wire: [OnceLock<Wire>; Encoding::COUNT],
    /// On a channel whose namespace allows deltas: what subscriptions with deltas get.
    deltas: Option<Box<DeltaFrames>>,
}

/// A publication's frames for subscriptions with deltas (see `crate::delta`), each made on
/// first use.
#[derive(Debug)]
struct DeltaFrames {
    /// The channel's publication before this one (offset - 1, same epoch), when the node
    /// delivered it.
    prev: Option<Arc<Publication>>,
    /// The delta from `prev`'s payload, when smaller than the payload.
    delta: OnceLock<Option<Vec<u8>>>,
    /// The delta push, per Centrifugo encoding (JSON: only for a delta that is UTF-8).
    delta_wire: [OnceLock<Option<Wire>>; 2],
    /// The whole payload as a JSON string (Centrifugo JSON; Protobuf uses the plain frame).
    text_wire: OnceLock<Wire>,
}

/// A whole WebSocket frame and the length of its payload (what `gateway_bytes_out_total`
/// counts).
#[derive(Debug)]
pub struct Wire {
    pub bytes: Box<[u8]>,
    pub payload: usize,
}

impl Delivery {
    /// Wraps `publication`, received now.
    pub fn new(publication: Arc<Publication>) -> Arc<Self> {
        Arc::new(Self {
            publication,
            received_at: Instant::now(),
            wire: Default::default(),
            deltas: None,
        })
    }

    /// Wraps `publication` of a channel that allows deltas, received now, with the channel's
    /// publication before it as this node delivered it (`prev`, if any): kept only when it
    /// is the one right before, in the same epoch.
    pub fn with_previous(
        publication: Arc<Publication>,
        prev: Option<Arc<Publication>>,
    ) -> Arc<Self> {
        let prev = prev.filter(|p| {
            p.epoch == publication.epoch && p.offset.checked_add(1) == Some(publication.offset)
        });
        Arc::new(Self {
            publication,
            received_at: Instant::now(),
            wire: Default::default(),
            deltas: Some(Box::new(DeltaFrames {
                prev,
                delta: OnceLock::new(),
                delta_wire: Default::default(),
                text_wire: OnceLock::new(),
            })),
        })
    }

    /// The `message` push in `encoding` as a whole WebSocket frame, encoded on first use.
    pub fn wire(&self, encoding: Encoding) -> &Wire {
        self.wire[encoding.slot()].get_or_init(|| {
            let message = message_frame(encoding, &self.publication);
            Wire::of(encoding, frame_bytes(&message))
        })
    }

    /// The push for a subscription with deltas whose last publication on the wire was at
    /// offset `base`: the delta from it when this publication follows it and a delta is worth
    /// sending, else the whole payload (in Centrifugo JSON, as a string). `None` only for a
    /// delivery wrapped without the channel's deltas (a subscription that began while this
    /// was on its way): the caller makes the frame with [`Delivery::whole_for_delta`].
    pub fn delta_wire(&self, encoding: Encoding, base: Option<u64>) -> Option<&Wire> {
        let frames = self.deltas.as_deref()?;
        let slot = match encoding {
            Encoding::CentrifugeJson => 0,
            Encoding::CentrifugeProtobuf => 1,
            // v1 has no deltas.
            _ => return Some(self.wire(encoding)),
        };
        if let Some(prev) = &frames.prev
            && base == Some(prev.offset)
        {
            let delta = frames.delta.get_or_init(|| {
                let before = crate::protocol::centrifuge::json_data(prev);
                let now = crate::protocol::centrifuge::json_data(&self.publication);
                crate::delta::fossil(&before, &now)
            });
            let wire = frames.delta_wire[slot].get_or_init(|| {
                let delta = delta.as_deref()?;
                if encoding == Encoding::CentrifugeJson && !crate::delta::is_text(delta) {
                    return None;
                }
                let push = crate::protocol::centrifuge::delta_push(
                    encoding,
                    &self.publication,
                    Some(delta),
                );
                Some(Wire::of(encoding, &push))
            });
            if let Some(wire) = wire {
                return Some(wire);
            }
        }
        Some(match encoding {
            Encoding::CentrifugeJson => frames
                .text_wire
                .get_or_init(|| self.whole_for_delta(encoding)),
            _ => self.wire(encoding),
        })
    }

    /// The whole publication's push for a subscription with deltas (see
    /// [`Delivery::delta_wire`]), made now.
    pub fn whole_for_delta(&self, encoding: Encoding) -> Wire {
        let push = crate::protocol::centrifuge::delta_push(encoding, &self.publication, None);
        Wire::of(encoding, &push)
    }
}

impl Wire {
    /// `payload` framed for the socket in `encoding`.
    fn of(encoding: Encoding, payload: &[u8]) -> Wire {
        let mut bytes = Vec::with_capacity(payload.len() + 10);
        put_frame(&mut bytes, encoding, payload);
        Wire {
            bytes: bytes.into_boxed_slice(),
            payload: payload.len(),
        }
    }
}

/// One item waiting to be written to a client.
#[derive(Debug)]
pub enum Outbound {
    /// An encoded frame (replies, presence events, disconnect).
    Frame(Bytes),
    /// A message push, its frame shared by every subscriber.
    Message(Arc<Delivery>),
}

struct Recovering {
    channel: Arc<str>,
    buffered: Vec<Arc<Delivery>>,
}

/// What the node (or a backend, through the node) asks of a session, which owns its
/// subscriptions and its expiry and so carries the request out itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Drop `channel`, and say why.
    Unsubscribe(Arc<str>, UnsubscribeReason),
    /// Subscribe to `channel` as the server (a server-side subscription).
    Subscribe(Arc<str>),
    /// Expire at this Unix second (`None`: never), and tell the client.
    Refresh(Option<u64>),
}

impl Request {
    /// Whether both are the same kind of change to the same channel.
    fn same_channel_change(&self, other: &Request) -> bool {
        match (self, other) {
            (Request::Unsubscribe(a, _), Request::Unsubscribe(b, _))
            | (Request::Subscribe(a), Request::Subscribe(b)) => a == b,
            _ => false,
        }
    }
}

/// What a connection holds only now and then (while a subscribe recovers, while the node asks
/// it to drop a channel): boxed, so that an idle connection pays one pointer for it.
#[derive(Default)]
struct Occasional {
    recovering: Vec<Recovering>,
    /// What the node asks of the session, in order.
    requests: Vec<Request>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    occasional: Option<Box<Occasional>>,
    closing: Option<CloseReason>,
}

impl QueueState {
    fn occasional(&mut self) -> &mut Occasional {
        self.occasional.get_or_insert_with(Default::default)
    }

    /// Frees the box once nothing is in it.
    fn tidy(&mut self) {
        if self
            .occasional
            .as_ref()
            .is_some_and(|o| o.recovering.is_empty() && o.requests.is_empty())
        {
            self.occasional = None;
        }
    }

    fn recovering_mut(&mut self, channel: &str) -> Option<&mut Recovering> {
        self.occasional
            .as_mut()?
            .recovering
            .iter_mut()
            .find(|r| &*r.channel == channel)
    }
}

/// The shared handle of one live connection.
pub struct Conn {
    /// Node-unique connection id.
    pub id: u64,
    /// The user it belongs to.
    pub user: Arc<str>,
    /// Its wire encoding.
    pub encoding: Encoding,
    /// The worker thread its session runs on (the one that accepted it).
    worker: WorkerId,
    capacity: usize,
    /// Subscribed to its own `user:<id>` channel (see the hub).
    personal: AtomicBool,
    /// Set while `QueueState::unsubscribe` holds requests: the session checks it on every
    /// loop turn without taking the queue lock.
    requests_pending: AtomicBool,
    state: Mutex<QueueState>,
    /// Set when something was queued (or a close or unsubscribe asked for) since the session
    /// last looked; with `waker`, a one-permit signal like `Notify::notify_one`, without its
    /// waiter list and lock: only the session task ever waits.
    signal: AtomicBool,
    waker: AtomicWaker,
}

impl Conn {
    /// A connection whose queue holds at most `capacity` items.
    pub fn new(id: u64, user: Arc<str>, encoding: Encoding, capacity: usize) -> Self {
        Self {
            id,
            user,
            encoding,
            worker: workers::current(),
            capacity,
            personal: AtomicBool::new(false),
            requests_pending: AtomicBool::new(false),
            state: Mutex::new(QueueState::default()),
            signal: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Whether the connection is subscribed to its own personal channel.
    pub fn personal(&self) -> bool {
        self.personal.load(Ordering::Relaxed)
    }

    /// Sets the personal-channel flag; returns its previous value.
    pub fn set_personal(&self, on: bool) -> bool {
        self.personal.swap(on, Ordering::Relaxed)
    }

    /// Queues a publication (or buffers it while its channel recovers). Overflow closes the
    /// connection with `slow_consumer`.
    pub fn deliver(&self, delivery: &Arc<Delivery>) {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return;
        }
        let capacity = self.capacity;
        if let Some(r) = state.recovering_mut(&delivery.publication.channel) {
            if r.buffered.len() < capacity {
                r.buffered.push(delivery.clone());
                return;
            }
        } else if state.items.len() < capacity {
            self.push_locked(&mut state, Outbound::Message(delivery.clone()));
            return;
        }
        self.overflow_locked(&mut state);
    }

    /// Asks the session to unsubscribe from `channel` and say why (it owns its channel list,
    /// so the node only asks).
    pub fn request_unsubscribe(&self, channel: Arc<str>, reason: UnsubscribeReason) {
        self.request(Request::Unsubscribe(channel, reason));
    }

    /// Asks the session for `request`. A subscribe or unsubscribe of a channel that already
    /// waits is not repeated; every refresh is kept (the last one wins).
    pub fn request(&self, request: Request) {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return;
        }
        let requests = &mut state.occasional().requests;
        if requests.iter().any(|r| r.same_channel_change(&request)) {
            return;
        }
        requests.push(request);
        self.requests_pending.store(true, Ordering::Release);
        self.notify();
    }

    /// Whether the node asked something since the last [`Conn::take_requests`] (an atomic
    /// load, no lock).
    pub fn requested(&self) -> bool {
        self.requests_pending.load(Ordering::Acquire)
    }

    /// Takes the requests made since the last call, in order (none without a lock when
    /// nothing was asked).
    pub fn take_requests(&self) -> Vec<Request> {
        if !self.requests_pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut state = self.state.lock();
        self.requests_pending.store(false, Ordering::Release);
        let requests = state
            .occasional
            .as_mut()
            .map(|o| std::mem::take(&mut o.requests))
            .unwrap_or_default();
        state.tidy();
        requests
    }

    /// Queues an encoded frame. Overflow closes the connection with `slow_consumer`.
    pub fn push_frame(&self, frame: Bytes) {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return;
        }
        if state.items.len() < self.capacity {
            self.push_locked(&mut state, Outbound::Frame(frame));
        } else {
            self.overflow_locked(&mut state);
        }
    }

    fn push_locked(&self, state: &mut QueueState, item: Outbound) {
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        if was_empty {
            self.notify();
        }
    }

    fn overflow_locked(&self, state: &mut QueueState) {
        metrics().queue_overflows.increment(1);
        state.items = VecDeque::new();
        state.occasional = None;
        state.closing = Some(CloseReason::SlowConsumer);
        self.notify();
    }

    /// Asks the session to close with `reason` (the first request wins). Queued items are
    /// dropped: the client recovers them by offset after reconnecting.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
            state.items = VecDeque::new();
            self.notify();
        }
    }

    /// The close requested, if any.
    pub fn closing(&self) -> Option<CloseReason> {
        self.state.lock().closing
    }

    /// Starts buffering live publications of `channel` until [`Conn::finish_recovery`].
    pub fn begin_recovery(&self, channel: Arc<str>) {
        let mut state = self.state.lock();
        if state.recovering_mut(&channel).is_none() {
            state.occasional().recovering.push(Recovering {
                channel,
                buffered: Vec::new(),
            });
        }
    }

    /// Ends buffering for `channel`: queues `reply`, then the replayed `history` (both past
    /// the capacity check: they are bounded by the history size), then the buffered live
    /// publications after offset `after` (the latest offset history was read at), in order.
    pub fn finish_recovery(
        &self,
        channel: &str,
        reply: Bytes,
        history: Vec<Arc<Delivery>>,
        after: u64,
    ) {
        let mut state = self.state.lock();
        let Some(occasional) = state.occasional.as_mut() else {
            return;
        };
        let Some(index) = occasional
            .recovering
            .iter()
            .position(|r| &*r.channel == channel)
        else {
            return;
        };
        let recovering = occasional.recovering.swap_remove(index);
        state.tidy();
        if state.closing.is_some() {
            return;
        }
        self.push_locked(&mut state, Outbound::Frame(reply));
        for delivery in history {
            self.push_locked(&mut state, Outbound::Message(delivery));
        }
        for delivery in recovering.buffered {
            if delivery.publication.offset > after {
                self.push_locked(&mut state, Outbound::Message(delivery));
            }
        }
    }

    /// Drops the recovery buffer of `channel` (the subscribe failed).
    pub fn abort_recovery(&self, channel: &str) {
        let mut state = self.state.lock();
        if let Some(occasional) = state.occasional.as_mut() {
            occasional.recovering.retain(|r| &*r.channel != channel);
        }
        state.tidy();
    }

    /// Takes everything queued: swaps the queue with `batch`, which must be empty, so that the
    /// two share one allocation between them (the session writes from one while deliveries go
    /// into the other) and an idle connection keeps at most one. Returns the close request,
    /// if any.
    pub fn take_batch(&self, batch: &mut VecDeque<Outbound>) -> Option<CloseReason> {
        debug_assert!(batch.is_empty());
        let mut state = self.state.lock();
        if let Some(reason) = state.closing {
            return Some(reason);
        }
        std::mem::swap(&mut state.items, batch);
        None
    }

    /// Frees the queue's allocation if nothing is in it (the session calls this when the
    /// connection has been quiet for a ping interval).
    pub fn release_idle_queue(&self) {
        let mut state = self.state.lock();
        if state.items.is_empty() {
            state.items = VecDeque::new();
        }
    }

    /// Wakes the session (or lets its next wait return at once); from another worker's
    /// thread, through the session's worker (see [`workers`]).
    fn notify(&self) {
        self.signal.store(true, Ordering::Release);
        workers::wake(self.worker, &self.waker);
    }

    /// Waits until something is queued or a close is requested. One waiter only: the
    /// connection's session task.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.signal.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.signal.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
