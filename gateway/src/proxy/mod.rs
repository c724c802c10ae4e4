//! The app's backend in the loop: connect, refresh, subscribe, publish, sub_refresh and rpc
//! proxies, each an HTTP endpoint of the app that the gateway asks (in Centrifugo's shapes,
//! [`wire`]) before it lets something happen.
//!
//! Each endpoint has a timeout (the client gets `unavailable`, Centrifugo's 100, when the
//! backend does not answer in time), a bound on calls in flight (a bulkhead: a call past it
//! is refused at once, as `backend busy`, rather than queued behind calls that may all time
//! out), a circuit breaker ([`breaker`]) and its own metrics. A backend's
//! answer is read up to `--proxy-max-answer-bytes`; redirects are not followed (a proxy URL
//! that redirects is misconfigured, and following one could send a client's cookies
//! elsewhere). Only the client's own allow-listed headers go with a request: never the API
//! key, never another client's.
//!
//! The commands (`cmd/`) and the first phase of a connection call these; the node never
//! learns which protocol a client speaks, and neither does this module beyond the `protocol`
//! field it reports.

pub mod breaker;
pub mod wire;

use crate::protocol::{CloseReason, Encoding, ErrorCode};
use breaker::{Admission, Breaker, State};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics::{counter, gauge, histogram};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wire::{BackendDisconnect, BackendError, Envelope};

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection without a token: who is it?
    Connect,
    /// A proxied connection's expiry: does it go on?
    Refresh,
    /// A subscribe in a namespace with `proxy_subscribe`.
    Subscribe,
    /// A publish in a namespace with `proxy_publish`.
    Publish,
    /// A proxied subscription's expiry.
    SubRefresh,
    /// A client's `rpc`.
    Rpc,
}

impl Kind {
    /// Every kind, in the order of [`Kind::index`].
    pub const ALL: [Kind; 6] = [
        Kind::Connect,
        Kind::Refresh,
        Kind::Subscribe,
        Kind::Publish,
        Kind::SubRefresh,
        Kind::Rpc,
    ];

    /// The `proxy` label and the name in settings.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a proxy call gave no answer of the backend's.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No answer within the timeout.
    #[error("backend timeout")]
    Timeout,
    /// As many calls as allowed are in flight already.
    #[error("backend busy")]
    Busy,
    /// The breaker is open: the backend failed too often just now.
    #[error("backend unavailable")]
    CircuitOpen,
    /// The call failed: connection, HTTP status, size or shape of the answer.
    #[error("backend failed: {0}")]
    Failed(String),
}

impl ProxyError {
    fn label(&self) -> &'static str {
        match self {
            ProxyError::Timeout => "timeout",
            ProxyError::Busy => "busy",
            ProxyError::CircuitOpen => "circuit_open",
            ProxyError::Failed(_) => "failed",
        }
    }

    /// What the client is told: retry later, with this message.
    pub fn client_message(&self) -> &'static str {
        match self {
            ProxyError::Timeout => "backend timeout",
            ProxyError::Busy => "backend busy",
            ProxyError::CircuitOpen => "backend unavailable",
            ProxyError::Failed(_) => "backend error",
        }
    }
}

/// What the backend answered.
#[derive(Debug)]
pub enum Answer<T> {
    /// Go ahead, with this result.
    Result(T),
    /// Refused with this error, which the client gets.
    Error(BackendError),
    /// End the connection.
    Disconnect(BackendDisconnect),
}

/// Whether a backend's `disconnect` code asks the client to come back: Centrifugo's ranges
/// (3000-3499 and 4000-4499 reconnect).
pub fn disconnect_reason(d: &BackendDisconnect) -> CloseReason {
    CloseReason::Disconnected {
        reconnect: matches!(d.code, 3000..=3499 | 4000..=4499),
    }
}

/// A backend's error as one of the gateway's codes: the code itself for Centrifugo's
/// protocol, the nearest v1 code for v1.
pub fn error_code(e: &BackendError) -> ErrorCode {
    ErrorCode::Backend {
        code: e.code,
        temporary: e.temporary,
    }
}

/// The settings of every proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Each kind's URL, in [`Kind::ALL`] order; `None`: that proxy is off.
    pub urls: [Option<Uri>; 6],
    /// Time a call may take.
    pub timeout: Duration,
    /// Calls in flight per endpoint.
    pub max_in_flight: usize,
    /// Failures in a row that open an endpoint's breaker.
    pub breaker_failures: u32,
    /// How long a breaker stays open before a probe.
    pub breaker_open: Duration,
    /// Largest answer read, bytes.
    pub max_answer_bytes: usize,
    /// Client request headers sent along (lowercase names).
    pub headers: Vec<HeaderName>,
}

impl ProxyConfig {
    /// Whether any proxy is on.
    pub fn any(&self) -> bool {
        self.urls.iter().any(Option::is_some)
    }
}

/// One backend endpoint.
struct Endpoint {
    kind: Kind,
    uri: Uri,
    slots: Semaphore,
    breaker: Breaker,
    calls: AtomicU64,
    failures: AtomicU64,
    last_error: parking_lot::Mutex<Option<String>>,
}

/// Every configured proxy, with the one HTTP client they share (a pool of kept-alive
/// connections per backend host).
pub struct Proxies {
    endpoints: [Option<Endpoint>; 6],
    client: HttpClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    max_answer: usize,
    headers: Vec<HeaderName>,
}

/// The headers of a client's HTTP request that go to the backend (the allow-list of
/// `--proxy-headers`), kept with the connection.
pub type Forwarded = Vec<(HeaderName, HeaderValue)>;

/// One endpoint's health, for the admin page.
#[derive(Debug, Serialize)]
pub struct Health {
    /// The proxy's name.
    pub proxy: &'static str,
    /// Calls made since start (refused by the breaker included).
    pub calls: u64,
    /// Calls that failed (timeouts, busy, refused by the breaker, transport or HTTP errors).
    pub failures: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// The HTTP client of the app's backend (proxies, webhooks): a pool of kept-alive HTTP/1.1
/// connections, `connect_timeout` to open one. It follows no redirect.
pub fn backend_client(connect_timeout: Duration) -> HttpClient<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

impl Proxies {
    /// The proxies `config` turns on.
    pub fn new(config: &ProxyConfig) -> Self {
        let client = backend_client(config.timeout);
        let endpoints = Kind::ALL.map(|kind| {
            config.urls[kind.index()].clone().map(|uri| Endpoint {
                kind,
                uri,
                slots: Semaphore::new(config.max_in_flight.max(1)),
                breaker: Breaker::new(config.breaker_failures, config.breaker_open),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_error: parking_lot::Mutex::new(None),
            })
        });
        for e in endpoints.iter().flatten() {
            gauge!("gateway_proxy_breaker_state", "proxy" => e.kind.name()).set(0.0);
        }
        Self {
            endpoints,
            client,
            timeout: config.timeout,
            max_answer: config.max_answer_bytes,
            headers: config.headers.clone(),
        }
    }

    /// Whether `kind` is configured.
    pub fn has(&self, kind: Kind) -> bool {
        self.endpoints[kind.index()].is_some()
    }

    /// Whether any proxy is configured (then connections keep their forwarded headers).
    pub fn any(&self) -> bool {
        self.endpoints.iter().any(Option::is_some)
    }

    /// The allow-listed headers of a client's request.
    pub fn forwarded(&self, headers: &HeaderMap) -> Forwarded {
        let mut out = Vec::new();
        for name in &self.headers {
            for value in headers.get_all(name) {
                out.push((name.clone(), value.clone()));
            }
        }
        out
    }

    /// Each configured endpoint's health.
    pub fn health(&self) -> Vec<Health> {
        self.endpoints
            .iter()
            .flatten()
            .map(|e| Health {
                proxy: e.kind.name(),
                calls: e.calls.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
                breaker: e.breaker.state().name(),
                last_error: e.last_error.lock().clone(),
            })
            .collect()
    }

    /// Asks the `kind` endpoint with `request`. `Err` when it gave no usable answer in time;
    /// the caller tells its client [`ProxyError::client_message`].
    ///
    /// # Panics
    /// When `kind` is not configured (callers check [`Proxies::has`]).
    pub async fn call<T: DeserializeOwned + Default>(
        &self,
        kind: Kind,
        request: &impl Serialize,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer<T>, ProxyError> {
        let endpoint = self.endpoints[kind.index()]
            .as_ref()
            .expect("a proxy that is not configured was called");
        let started = Instant::now();
        endpoint.calls.fetch_add(1, Ordering::Relaxed);
        let result = match endpoint.breaker.admit(started) {
            Admission::Refused => Err(ProxyError::CircuitOpen),
            admission => {
                let result = self.exchange::<T>(endpoint, request, forwarded).await;
                let now = Instant::now();
                // An answer of the backend's own, error or disconnect included, says it is up;
                // a full bulkhead says nothing of the backend (a refused probe is let through
                // again after the open time).
                let ok = match &result {
                    Err(ProxyError::Busy) => None,
                    result => Some(result.is_ok()),
                };
                if let Some(state) = ok.and_then(|ok| endpoint.breaker.record(admission, ok, now)) {
                    breaker_changed(endpoint, state);
                }
                result
            }
        };
        let label = match &result {
            Ok(Answer::Result(_)) => "ok",
            Ok(Answer::Error(_)) => "error",
            Ok(Answer::Disconnect(_)) => "disconnect",
            Err(e) => {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                *endpoint.last_error.lock() = Some(e.to_string());
                e.label()
            }
        };
        let proxy = kind.name();
        counter!("gateway_proxy_requests_total", "proxy" => proxy, "result" => label).increment(1);
        histogram!("gateway_proxy_request_duration_seconds", "proxy" => proxy)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::debug!(proxy, error = %e, "proxy call failed");
        }
        result
    }

    /// One request and its answer, within the timeout, if a slot is free.
    async fn exchange<T: DeserializeOwned + Default>(
        &self,
        endpoint: &Endpoint,
        request: &impl Serialize,
        forwarded: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer<T>, ProxyError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ProxyError::Failed(format!("request: {e}")))?;
        let Ok(_slot) = endpoint.slots.try_acquire() else {
            return Err(ProxyError::Busy);
        };
        let call = async {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(endpoint.uri.clone())
                .header(CONTENT_TYPE, "application/json");
            for (name, value) in forwarded {
                builder = builder.header(name, value);
            }
            let request = builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ProxyError::Failed(format!("request: {e}")))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ProxyError::Failed(format!("connection: {e}")))?;
            if response.status() != StatusCode::OK {
                return Err(ProxyError::Failed(format!(
                    "answered HTTP {}",
                    response.status().as_u16()
                )));
            }
            let max = self.max_answer;
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ProxyError::Failed(format!("answer over {max} bytes"))
                    } else {
                        ProxyError::Failed(format!("answer: {e}"))
                    }
                })?
                .to_bytes();
            let envelope: Envelope<T> = serde_json::from_slice(&body)
                .map_err(|e| ProxyError::Failed(format!("answer is not a proxy reply: {e}")))?;
            Ok(match envelope {
                Envelope {
                    disconnect: Some(d),
                    ..
                } => Answer::Disconnect(d),
                Envelope { error: Some(e), .. } => Answer::Error(e),
                Envelope { result, .. } => Answer::Result(result.unwrap_or_default()),
            })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Timeout),
        }
    }
}

fn breaker_changed(endpoint: &Endpoint, state: State) {
    let proxy = endpoint.kind.name();
    gauge!("gateway_proxy_breaker_state", "proxy" => proxy).set(state.gauge());
    tracing::warn!(proxy, breaker = state.name(), "proxy circuit breaker");
}

/// The `protocol` a request reports for a connection's encoding.
pub fn protocol_name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::CentrifugeJson => "json",
        Encoding::CentrifugeProtobuf => "protobuf",
        Encoding::Json | Encoding::MsgPack => "v1",
    }
}

/// A backend's `data` or `b64data` as JSON text: `Ok(None)` when it gave neither, `Err` when
/// `b64data` is not base64 of JSON text.
pub fn answer_data(
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
) -> Result<Option<Bytes>, ProxyError> {
    use base64::Engine;
    if let Some(data) = data {
        return Ok(Some(Bytes::from(
            Box::<str>::from(data).into_boxed_bytes().into_vec(),
        )));
    }
    let Some(b64) = b64data else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| ProxyError::Failed("b64data is not base64".into()))?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return Err(ProxyError::Failed("b64data is not JSON text".into()));
    }
    Ok(Some(Bytes::from(bytes)))
}

/// The display name a connect result's `info` gives: its `name` string.
pub fn info_name(info: Option<&RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        name: Option<String>,
    }
    info.and_then(|i| serde_json::from_str::<Info>(i.get()).ok())
        .and_then(|i| i.name)
}

/// The claims of a connection the connect proxy let in, and its `meta`; `Err` says why the
/// answer names no usable user (the same rules as a token's `sub` and `channels`).
pub fn connect_claims(
    result: wire::ConnectResult,
) -> Result<(crate::auth::Claims, Option<Box<RawValue>>), &'static str> {
    let user = result.user;
    if user.is_empty() {
        return Err("the backend named no user (anonymous connections are not offered)");
    }
    if user.len() > 128 || user.chars().any(char::is_control) {
        return Err("the backend's user must be 1..=128 bytes without control characters");
    }
    if !result.channels.iter().all(|p| crate::acl::valid_pattern(p)) {
        return Err("the backend's channels patterns may use * only as the last character");
    }
    // No expiry: a hundred years, as a server API refresh without one.
    let now = fanout::util::unix_secs();
    let exp = match result.expire_at {
        0 => now + 100 * 365 * 86_400,
        at if at <= now => return Err("the backend's expire_at has passed"),
        at => at,
    };
    let claims = crate::auth::Claims {
        sub: user,
        exp,
        name: info_name(result.info.as_deref()),
        channels: result.channels,
    };
    Ok((claims, result.meta))
}
