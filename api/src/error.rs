//! [`ApiError`]: every error the HTTP API returns, as `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use raft_store::RejectCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503 answers.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Authorization: invalid or missing API key",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    /// The cluster cannot take the request now (no leader, overloaded, node not ready).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message);
        error.retry_after_secs = Some(1);
        error
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// The error for a command the state machine refused.
    pub fn from_reject(code: RejectCode, message: String) -> Self {
        match code {
            RejectCode::Validation => Self::validation(message),
            RejectCode::Unauthorized => {
                Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
            }
            RejectCode::Forbidden => Self::forbidden(message),
            RejectCode::NotFound => Self::not_found(message),
            RejectCode::Gone => Self::new(StatusCode::GONE, "AGENT_DEACTIVATED", message),
            RejectCode::Conflict => Self::conflict(message),
            RejectCode::Unavailable => Self::unavailable(message),
        }
    }
}

impl From<raft_store::StoreError> for ApiError {
    fn from(error: raft_store::StoreError) -> Self {
        tracing::error!(%error, "storage error while serving a request");
        Self::internal("storage error; see the node's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
