//! Errors of the HTTP API, as `{"error": {"code", "message"}}` with a fitting status.

use crate::protocol::ErrorCode;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

/// An HTTP API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// On a failed publish: whether the message may still be published.
    pub maybe_published: Option<bool>,
}

impl ApiError {
    /// An error with the status that fits `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::LimitExceeded => StatusCode::FORBIDDEN,
            ErrorCode::NotSubscribed => StatusCode::NOT_FOUND,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::MethodNotFound => StatusCode::NOT_FOUND,
            ErrorCode::NotAvailable => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
            ErrorCode::UnrecoverablePosition => StatusCode::CONFLICT,
            ErrorCode::Backend { .. } => StatusCode::FORBIDDEN,
        };
        Self {
            status,
            code,
            message: message.into(),
            maybe_published: None,
        }
    }

    /// Overrides the status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        if let Some(maybe) = self.maybe_published {
            body["error"]["maybe_published"] = maybe.into();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<fanout::BrokerError> for ApiError {
    fn from(e: fanout::BrokerError) -> Self {
        ApiError::new(ErrorCode::from(&e), e.to_string())
    }
}

impl ApiError {
    /// The error of a failed publish, saying whether the message may still be published.
    pub fn publish(e: fanout::BrokerError) -> Self {
        let maybe = e.maybe_applied();
        let mut error = ApiError::from(e);
        error.maybe_published = Some(maybe);
        error
    }
}

impl From<presence::PresenceError> for ApiError {
    fn from(e: presence::PresenceError) -> Self {
        ApiError::new(ErrorCode::from(&e), e.to_string())
    }
}

impl From<presence::RegistryError> for ApiError {
    fn from(e: presence::RegistryError) -> Self {
        ApiError::new(ErrorCode::from(&e), e.to_string())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        };
        ApiError::new(code, e.body_text()).with_status(status)
    }
}
