//! HTTP routes: the WebSocket endpoint, the backend API, client routing, dev tokens, health,
//! metrics and the demo page.

mod api;
mod error;
mod ops;
mod ws;

use crate::node::Node;
use crate::protocol::ErrorCode;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::sync::Arc;

pub use error::ApiError;

/// The node's router.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config.limits.max_frame_size;
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/api/publish", post(api::publish))
        .route("/api/presence/{channel}", get(api::presence))
        .route("/api/presence/{channel}/stats", get(api::presence_stats))
        .route("/api/history/{channel}", get(api::history))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/unsubscribe", post(api::unsubscribe))
        .route("/api/nodes", get(api::nodes))
        .route("/v1/route", get(ops::route))
        .route("/dev/token", post(ops::dev_token))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/", get(ops::index))
        .route("/assets/{file}", get(ops::asset))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(node)
}

/// Reads a request body of at most `--max-frame-size` bytes within `--request-timeout-secs`:
/// a slow or stalled body gets 408 and its connection closed, a large one 413.
pub(crate) async fn read_body(node: &Node, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limits = &node.config.limits;
    let read = axum::body::to_bytes(body, limits.max_frame_size);
    match tokio::time::timeout(limits.request_timeout, read).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the request body did not arrive within {} s",
                limits.request_timeout.as_secs()
            ),
        )
        .with_status(http::StatusCode::REQUEST_TIMEOUT)),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the request body is over {} bytes", limits.max_frame_size),
                )
            } else {
                ApiError::new(ErrorCode::BadRequest, format!("reading the body: {e}"))
            })
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The `token` query parameter, for browsers that cannot set headers on a WebSocket.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenQuery {
    /// The token, if given.
    pub token: Option<String>,
}

/// The token a request carries: `Authorization: Bearer <token>`, else the `token` query
/// parameter.
pub fn request_token(headers: &http::HeaderMap, query: TokenQuery) -> Option<String> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value
            .strip_prefix("Bearer ")
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
    }
    query.token.filter(|t| !t.is_empty())
}
