//! The error shape every answer shares, and the JSON body extractor that maps every
//! rejection to it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What was wrong and what to do, for a person.
    pub message: String,
}

impl ApiError {
    /// 400: the body is not what the route takes.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: well-formed but out of range.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 before the first version is swapped in.
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no data version is loaded yet; retry shortly",
        )
    }

    /// 408: the request (or its body) did not arrive within the server's deadline.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request did not arrive (or finish) in time; send it again",
        )
    }

    /// 503: too many searches at once; retry shortly.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many searches at once; retry shortly",
        )
    }

    /// 503: the main port holds as many connections as it serves; retry shortly.
    pub fn too_many_connections() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server has too many open connections; retry shortly",
        )
    }

    /// 503: the remote vector backend failed or its circuit is open; the cause is logged
    /// here, once, and `/items` keeps working.
    pub fn vector_backend_unavailable(error: crate::pinecone::PineconeError) -> Self {
        match error {
            // Failing fast is the breaker working; its opening was logged once.
            crate::pinecone::PineconeError::CircuitOpen => {
                tracing::debug!(error = %error, "vector backend unavailable")
            }
            _ => tracing::error!(error = %error, "vector backend unavailable"),
        }
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vector_backend_unavailable",
            "the vector backend is unavailable; retry shortly (item lookups still work)",
        )
    }

    /// 500: the cause is logged here, once; the answer stays generic.
    pub fn internal(error: anyhow::Error) -> Self {
        tracing::error!(error = format!("{error:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the cause is in the server log",
        )
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The `{id}` of a path, as UTF-8 text; anything else is refused in the error shape every
/// answer shares (axum's own rejection is plain text).
pub struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|rejection| {
                ApiError::bad_request(
                    "invalid_path",
                    format!(
                        "the item id in the path is not valid: {}",
                        rejection.body_text()
                    ),
                )
            })
    }
}

/// A JSON request body. Any `Content-Type` is accepted (clients of the service this
/// replaces do not all send one); errors name the field.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if super::serve::is_body_timeout(&rejection) {
                ApiError::request_timeout()
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "request body is larger than {} bytes",
                        super::MAX_BODY_BYTES
                    ),
                )
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.inner();
            if inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(
                    "invalid_json",
                    format!("request body is not valid JSON: {inner}"),
                )
            } else if path == "." {
                ApiError::bad_request("invalid_field", format!("{inner}"))
            } else {
                ApiError::bad_request("invalid_field", format!("field `{path}`: {inner}"))
            }
        })?;
        deserializer.end().map_err(|error| {
            ApiError::bad_request(
                "invalid_json",
                format!("request body is not valid JSON: {error}"),
            )
        })?;
        Ok(JsonBody(value))
    }
}
