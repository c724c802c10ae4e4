//! The proxies' requests and answers, in Centrifugo's HTTP proxy shapes, so that a backend
//! written for Centrifugo's proxies serves this gateway unchanged. Every request is a JSON
//! `POST`; every answer is `{"result": ...}`, `{"error": {"code", "message"}}` or
//! `{"disconnect": {"code", "reason"}}`. Fields this gateway does not act on are ignored
//! (listed in docs/proxies.md).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What every request says about the connection it is for.
#[derive(Debug, Serialize)]
pub struct Client<'a> {
    /// The connection's id (v1's `session`, Centrifugo's `client`).
    pub client: &'a str,
    /// `websocket`, `http_stream` or `sse`.
    pub transport: &'a str,
    /// `json` or `protobuf` (Centrifugo's protocol), `v1` (this gateway's).
    pub protocol: &'a str,
    /// How `data` is encoded: always `json` (payloads are JSON in every protocol).
    pub encoding: &'static str,
    /// The user; absent before the connect proxy named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The connect proxy's `meta`, given back on every later request of the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// A request: what every request says of the connection, and what this proxy adds.
#[derive(Debug, Serialize)]
pub struct Request<'a, F> {
    #[serde(flatten)]
    pub client: Client<'a>,
    #[serde(flatten)]
    pub fields: F,
}

/// The connect proxy's fields: a connection that brought no token.
#[derive(Debug, Default, Serialize)]
pub struct ConnectFields<'a> {
    /// The SDK's name and version, as its `connect` said.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    /// The `data` of the client's `connect` (JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// The connect proxy's result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// The user; empty refuses the connection (anonymous connections are not offered).
    pub user: String,
    /// When the connection expires, Unix seconds; 0: never. At expiry the refresh proxy is
    /// asked (when configured; otherwise the connection ends and the client connects again).
    pub expire_at: u64,
    /// Shown to others: its `name` string, if any, is the user's display name.
    pub info: Option<Box<RawValue>>,
    /// Extra channel patterns the user may subscribe and publish to (as the token's
    /// `channels` claim).
    pub channels: Vec<String>,
    /// Kept with the connection and sent back in every later proxy request.
    pub meta: Option<Box<RawValue>>,
}

/// The refresh proxy's fields: none (the connection says it all).
#[derive(Debug, Serialize)]
pub struct RefreshFields {}

/// The refresh proxy's result, and the sub_refresh proxy's.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// The connection (subscription) ends now.
    pub expired: bool,
    /// The new expiry, Unix seconds; 0: never.
    pub expire_at: u64,
}

/// The subscribe and sub_refresh proxies' fields.
#[derive(Debug, Serialize)]
pub struct ChannelFields<'a> {
    pub channel: &'a str,
}

/// The subscribe proxy's result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// When the subscription expires, Unix seconds; 0: never. At expiry the sub_refresh proxy
    /// is asked (when configured; otherwise the subscription ends with an `unsubscribe` that
    /// asks the client to subscribe again, which asks the subscribe proxy again).
    pub expire_at: u64,
}

/// The publish proxy's fields.
#[derive(Debug, Serialize)]
pub struct PublishFields<'a> {
    pub channel: &'a str,
    /// What the client published (JSON).
    pub data: &'a RawValue,
}

/// The publish proxy's result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// When given: published instead of what the client sent.
    pub data: Option<Box<RawValue>>,
    /// Base64 of JSON text, as `data` (for backends that always answer Centrifugo's binary
    /// form).
    pub b64data: Option<String>,
}

/// The rpc proxy's fields.
#[derive(Debug, Serialize)]
pub struct RpcFields<'a> {
    pub method: &'a str,
    /// The call's argument (JSON); absent when the client sent none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// The rpc proxy's result.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    /// What the client gets (JSON; `null` when absent).
    pub data: Option<Box<RawValue>>,
    /// Base64 of JSON text, as `data`.
    pub b64data: Option<String>,
}

/// An error the backend answers: passed to the client as it is (Centrifugo's protocol), or as
/// the nearest v1 code.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendError {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    /// Centrifugo's SDKs retry after a temporary error.
    #[serde(default)]
    pub temporary: bool,
}

/// The backend ends the connection.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendDisconnect {
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

/// Any answer, as it comes.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<T> {
    #[serde(default = "Option::default")]
    pub result: Option<T>,
    #[serde(default)]
    pub error: Option<BackendError>,
    #[serde(default)]
    pub disconnect: Option<BackendDisconnect>,
}
