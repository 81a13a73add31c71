//! The error shape every answer shares, and the JSON body extractor that maps every
//! rejection to it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What was wrong and what to do, for a person.
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error answers every route can give: its request arrived too slowly (408).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // described in the contract, never built: the answers are `ApiError`s
pub enum SlowRequest {
    /// 408.
    #[response(
        status = 408,
        description = "The request or its body did not arrive in time (`request_timeout`)."
    )]
    TimedOut(ErrorBody),
}

/// The error answer of every route that reads the data: an internal error (500).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // described in the contract, never built: the answers are `ApiError`s
pub enum ServerError {
    /// 500.
    #[response(
        status = 500,
        description = "An internal error (`internal`); the cause is in the server log."
    )]
    Internal(ErrorBody),
}

/// The error answers of the routes that read a JSON body: the body refused (400, 413).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // described in the contract, never built: the answers are `ApiError`s
pub enum BodyAnswers {
    /// 400.
    #[response(
        status = 400,
        description = "The body is not JSON (`invalid_json`), a field is missing or of the wrong type (`invalid_field`, the message names it), or the body could not be read (`unreadable_body`)."
    )]
    Invalid(ErrorBody),
    /// 413.
    #[response(
        status = 413,
        description = "The body is over 64 KiB (`payload_too_large`)."
    )]
    TooLarge(ErrorBody),
}

/// The answers of an item lookup by id (`GET /items/{id}`, `GET /items/batch`), beside
/// [`SlowRequest`] and [`ServerError`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // described in the contract, never built: the answers are written by hand
pub enum ItemAnswers {
    /// 200.
    #[response(status = 200, description = "The item's JSON, exactly as stored.")]
    Found(#[to_schema] serde_json::Map<String, serde_json::Value>),
    /// 400.
    #[response(
        status = 400,
        description = "The id in the path is not UTF-8 (`invalid_path`)."
    )]
    InvalidPath(ErrorBody),
    /// 404.
    #[response(status = 404, description = "No item with this id (`not_found`).")]
    NotFound(ErrorBody),
    /// 503.
    #[response(
        status = 503,
        description = "No data version loaded yet (`not_ready`), or too many connections (`overloaded`)."
    )]
    Unavailable(ErrorBody),
}

/// The code and message of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: what to branch on.
    pub code: ErrorCode,
    /// What was wrong and what to do, for a person; its wording may change.
    pub message: String,
}

/// The stable codes of error answers. 400: `invalid_json` (the body is not JSON),
/// `invalid_field` (a field is missing or of the wrong type; the message names it),
/// `invalid_path` (an item id in the path that is not UTF-8), `unreadable_body` (e.g. broken
/// chunked framing). 404: `not_found` (no such item or route). 405: `method_not_allowed`.
/// 408: `request_timeout`. 413: `payload_too_large`. 422: `top_k_out_of_range`,
/// `too_many_ids`, `too_many_terms`, `bad_filter`. 503 (with `Retry-After`): `not_ready` (no
/// data version loaded yet), `overloaded` (too many searches or connections at once),
/// `vector_backend_unavailable` (the remote vector backend failed; item lookups still work).
/// 500: `internal` (the cause is in the server log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: a field is missing or of the wrong type.
    InvalidField,
    /// 400: an item id in the path that is not UTF-8.
    InvalidPath,
    /// 400: the body could not be read.
    UnreadableBody,
    /// 404: no such item or route.
    NotFound,
    /// 405: the route does not take that method.
    MethodNotAllowed,
    /// 408: the request or its body did not arrive in time.
    RequestTimeout,
    /// 413: the body is over 64 KiB.
    PayloadTooLarge,
    /// 422: `top_k` outside 1..=1000.
    TopKOutOfRange,
    /// 422: more than 1000 ids in a batch.
    TooManyIds,
    /// 422: a query with more distinct known terms than `--max-query-terms`.
    TooManyTerms,
    /// 422: a filter on a field that is not indexed, or with a value that is not a string,
    /// number or boolean.
    BadFilter,
    /// 503: no data version is loaded yet.
    NotReady,
    /// 503: too many searches or connections at once.
    Overloaded,
    /// 503: the remote vector backend failed or its circuit is open.
    VectorBackendUnavailable,
    /// 500: an internal error.
    Internal,
}

impl ApiError {
    /// 400: the body is not what the route takes.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 422: well-formed but out of range.
    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 503 before the first version is swapped in.
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotReady,
            "no data version is loaded yet; retry shortly",
        )
    }

    /// 408: the request (or its body) did not arrive within the server's deadline.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            "the request did not arrive (or finish) in time; send it again",
        )
    }

    /// 503: too many searches at once; retry shortly.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many searches at once; retry shortly",
        )
    }

    /// 503: the main port holds as many connections as it serves; retry shortly.
    pub fn too_many_connections() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
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
            ErrorCode::VectorBackendUnavailable,
            "the vector backend is unavailable; retry shortly (item lookups still work)",
        )
    }

    /// 500: the cause is logged here, once; the answer stays generic.
    pub fn internal(error: anyhow::Error) -> Self {
        tracing::error!(error = format!("{error:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; the cause is in the server log",
        )
    }

    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
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
                    ErrorCode::InvalidPath,
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
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "request body is larger than {} bytes",
                        super::MAX_BODY_BYTES
                    ),
                )
            } else {
                ApiError::bad_request(ErrorCode::UnreadableBody, rejection.body_text())
            }
        })?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.inner();
            if inner.is_syntax() || inner.is_eof() {
                ApiError::bad_request(
                    ErrorCode::InvalidJson,
                    format!("request body is not valid JSON: {inner}"),
                )
            } else if path == "." {
                ApiError::bad_request(ErrorCode::InvalidField, format!("{inner}"))
            } else {
                ApiError::bad_request(ErrorCode::InvalidField, format!("field `{path}`: {inner}"))
            }
        })?;
        deserializer.end().map_err(|error| {
            ApiError::bad_request(
                ErrorCode::InvalidJson,
                format!("request body is not valid JSON: {error}"),
            )
        })?;
        Ok(JsonBody(value))
    }
}
