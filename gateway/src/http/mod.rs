//! HTTP routes: the WebSocket endpoint, the backend API, client routing, dev tokens, health,
//! metrics and the demo page.

mod api;
mod centrifuge;
mod centrifugo_api;
pub mod emulation;
mod error;
mod ops;
pub mod raw;
mod uni;
mod upgrade;
mod ws;

use crate::node::Node;
use crate::protocol::ErrorCode;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{self, MethodRouter};
use std::sync::Arc;

pub use error::ApiError;

/// The OpenAPI 3.1 description of [`routes`] (all but the demo page's), served at
/// `GET /api/openapi.json`; a unit test holds the two together.
pub const OPENAPI: &str = include_str!("openapi.json");

/// One route: method, path and handler.
pub struct Route {
    /// HTTP method, lower case as in OpenAPI (`get`, `post`).
    pub method: &'static str,
    /// Path in axum's (and OpenAPI's) form: `/api/history/{channel}`.
    pub path: &'static str,
    handler: MethodRouter<Arc<Node>>,
    /// A page (the demo, the admin page) or its assets, not part of the described HTTP API.
    pub demo: bool,
}

fn get<H: Handler<T, Arc<Node>>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route {
        method: "get",
        path,
        handler: routing::get(handler),
        demo: false,
    }
}

fn post<H: Handler<T, Arc<Node>>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route {
        method: "post",
        path,
        handler: routing::post(handler),
        demo: false,
    }
}

fn options<H: Handler<T, Arc<Node>>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route {
        method: "options",
        path,
        handler: routing::options(handler),
        demo: false,
    }
}

fn demo(route: Route) -> Route {
    Route {
        demo: true,
        ..route
    }
}

/// Every route of a node.
pub fn routes() -> Vec<Route> {
    vec![
        get("/ws", ws::upgrade),
        get("/connection/websocket", centrifuge::upgrade),
        post("/connection/http_stream", emulation::http_stream),
        get("/connection/sse", emulation::sse),
        post("/emulation", emulation::emulation),
        post("/connection/uni_http_stream", uni::http_stream),
        get("/connection/uni_sse", uni::sse),
        post("/connection/uni_sse", uni::sse_post),
        options("/connection/http_stream", emulation::preflight),
        options("/emulation", emulation::preflight),
        post("/api/publish", api::publish),
        get("/api/presence/{channel}", api::presence),
        get("/api/presence/{channel}/stats", api::presence_stats),
        get("/api/history/{channel}", api::history),
        post("/api/disconnect", api::disconnect),
        post("/api/unsubscribe", api::unsubscribe),
        post("/centrifugo/api/{method}", centrifugo_api::call),
        get("/api/nodes", api::nodes),
        get("/api/proxies", api::proxies),
        get("/api/channels", api::channels),
        get("/api/openapi.json", ops::openapi),
        get("/v1/route", ops::route),
        post("/dev/token", ops::dev_token),
        get("/healthz", ops::healthz),
        get("/readyz", ops::readyz),
        get("/metrics", ops::metrics),
        demo(get("/", ops::index)),
        demo(get("/admin", ops::admin)),
        demo(get("/assets/{file}", ops::asset)),
    ]
}

/// The node's router.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config.limits.max_frame_size;
    routes()
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_document_describes_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.1.0");
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item");
                methods
                    .keys()
                    .filter(|m| !matches!(m.as_str(), "summary" | "description" | "parameters"))
                    .map(|m| (m.clone(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let served: BTreeSet<(String, String)> = routes()
            .iter()
            .filter(|r| !r.demo)
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let undescribed: Vec<_> = served.difference(&described).collect();
        let unserved: Vec<_> = described.difference(&served).collect();
        assert!(
            undescribed.is_empty(),
            "routes without a description: {undescribed:?}"
        );
        assert!(
            unserved.is_empty(),
            "described but not served: {unserved:?}"
        );
    }

    #[test]
    fn every_reference_in_the_openapi_document_resolves() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        fn walk(v: &serde_json::Value, doc: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').expect("a local reference");
                        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        walk(&doc, &doc);
    }
}
