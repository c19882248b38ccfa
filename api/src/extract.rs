//! `Query` and `Path` extractors whose rejections are the API's JSON error (400
//! VALIDATION_ERROR), not axum's plain-text answer.
//!
//! Found by schemathesis (docs/API.md): `?per_page=1&per_page=2` got axum's
//! `text/plain` "Failed to deserialize query string: duplicate field", which is neither the
//! error envelope nor a documented content type.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `axum::extract::Query`, rejected as `400 {"error": {"code": "VALIDATION_ERROR", …}}`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| Self(query.0))
            .map_err(|rejection| {
                ApiError::validation(format!("query string: {}", rejection.body_text()))
            })
    }
}

/// `axum::extract::Path`, rejected as `400 {"error": {"code": "VALIDATION_ERROR", …}}`.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| Self(path.0))
            .map_err(|rejection| ApiError::validation(format!("path: {}", rejection.body_text())))
    }
}
