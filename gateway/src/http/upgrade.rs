//! The WebSocket opening handshake (RFC 6455 §4.2) on hyper's upgrade.
//!
//! Written here rather than taken from axum's `WebSocketUpgrade` so that a connection's task is
//! the session and nothing else: axum's `on_upgrade` spawns a future that keeps its config,
//! callback and protocol beside the session for the socket's whole life (about 200 bytes), and
//! tokio rounds a task up to 128 bytes, so those bytes cost a whole 128-byte step or more per
//! idle connection (see `session::task_size`).

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that asked for a WebSocket, checked; [`Upgrade::accept`] answers it.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request to the WebSocket endpoint is not a WebSocket handshake.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRejection {
    /// Not `GET`.
    #[error("a WebSocket handshake is a GET request")]
    MethodNotGet,
    /// Not HTTP/1.1 (or older): this endpoint speaks WebSocket over HTTP/1.1.
    #[error("a WebSocket handshake needs HTTP/1.1")]
    Version,
    /// `Connection` does not name `upgrade`.
    #[error("Connection header did not include 'upgrade'")]
    ConnectionHeader,
    /// `Upgrade` is not `websocket`.
    #[error("`Upgrade` header did not include 'websocket'")]
    UpgradeHeader,
    /// No `Sec-WebSocket-Key`.
    #[error("`Sec-WebSocket-Key` header missing")]
    KeyMissing,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("`Sec-WebSocket-Version` header did not include '13'")]
    WebSocketVersion,
    /// The connection cannot be taken over (not served by hyper's upgradeable connection).
    #[error("WebSocket request couldn't be upgraded since no upgrade state was present")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgradable | Self::Version => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn header_lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The `Sec-WebSocket-Key` of a request whose headers ask for a WebSocket (RFC 6455 §4.2.1:
/// `Connection: upgrade`, `Upgrade: websocket`, a key, version 13).
pub(super) fn handshake_key(headers: &HeaderMap) -> Result<&HeaderValue, UpgradeRejection> {
    if !header_lists(headers, header::CONNECTION, "upgrade") {
        return Err(UpgradeRejection::ConnectionHeader);
    }
    if !header_is(headers, header::UPGRADE, "websocket") {
        return Err(UpgradeRejection::UpgradeHeader);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeRejection::KeyMissing)?;
    if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(UpgradeRejection::WebSocketVersion);
    }
    Ok(key)
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        if parts.version > Version::HTTP_11 {
            return Err(UpgradeRejection::Version);
        }
        let key = handshake_key(&parts.headers)?.clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, with `protocol` as the chosen subprotocol, and the
    /// future that resolves to the raw connection once hyper has sent it.
    pub fn accept(self, protocol: Option<&'static str>) -> (Response, OnUpgrade) {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::try_from(accept).expect("base64 is a valid header value"),
        );
        if let Some(protocol) = protocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        (response, self.on_upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_header_lists_are_read_token_by_token() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_lists(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!header_lists(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!header_lists(&headers, header::CONNECTION, "upgrade"));
    }
}
