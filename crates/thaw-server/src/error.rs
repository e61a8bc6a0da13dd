//! API errors: a stable code, an HTTP status and a message that names the input, and
//! their conversion from the store's errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thaw_api::api::{ErrorBody, ErrorCode, ErrorDetail};
use thaw_store::{RepoError, StoreError};

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The stable code (and so the HTTP status).
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// An invalid argument (422).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// A failure of the daemon itself (500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The caller may not do this (403).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// Something named does not exist (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        let code = match &e {
            RepoError::NoSuchImage(_) | RepoError::MissingManifest(_) => ErrorCode::NotFound,
            RepoError::AmbiguousImage { .. } | RepoError::Format(_) => ErrorCode::InvalidArgument,
            RepoError::Store(s) => match s {
                StoreError::NotFound { .. } => ErrorCode::NotFound,
                StoreError::BadLocation { .. } | StoreError::Permanent { .. } => {
                    ErrorCode::Internal
                }
                _ => ErrorCode::StoreUnavailable,
            },
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code.status() >= 500 {
            tracing::warn!(code = ?self.code, message = %self.message, "request failed");
        }
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}
