//! The one error type of the crate and its mapping to the contract's error body
//! (`{"error":{"code","message","fields"?}}`, CONTRACT §6).
//!
//! Domain services, extractors and handlers all return [`Error`]; nothing else decides a status
//! code. Database errors are mapped here once: a lost connection or a busy SQLite file is a 503 the
//! client may retry, a constraint the domain did not foresee is a 409, anything else is a logged 500
//! (a 500 is always a bug).

use std::collections::BTreeMap;

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde_json::json;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON at all.
    #[error("Malformed JSON: {0}")]
    MalformedJson(String),
    /// Field name → what is wrong with it.
    #[error("Invalid input")]
    Validation(BTreeMap<String, String>),
    #[error("Authentication required")]
    Unauthenticated,
    #[error("Invalid token")]
    InvalidToken,
    /// Kept apart from `InvalidToken` so a client knows to refresh rather than sign in again.
    #[error("Token expired")]
    TokenExpired,
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("This account is disabled")]
    AccountDisabled,
    #[error("{0}")]
    Forbidden(String),
    /// A cookie-authenticated write from another origin (CONTRACT §3.1).
    #[error("Cross-site request refused: send it from this server's pages, or with a bearer token")]
    CrossSiteRequest,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("Request body is too large")]
    PayloadTooLarge,
    /// The body did not arrive in time (a client holding a request open byte by byte).
    #[error("The request body did not arrive in time")]
    RequestTimeout,
    /// Too many failed sign-ins for this account lately (CONTRACT §3.1).
    #[error("Too many failed sign-ins for this account; try again later")]
    TooManyAttempts { retry_after_secs: u64 },
    /// Too much work of one kind at once (password hashing): come back shortly.
    #[error("The server is busy; try again shortly")]
    Busy { retry_after_secs: u64 },
    #[error("Database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// What each change of a batch that failed as a whole is told: 503. The batch failed on the
    /// statements every batch runs (the event counter, savepoints, the log, the commit), not on
    /// anything a change asked for — in practice a database that went away or broke off — so
    /// nothing of it committed and a retry is the answer; the cause is logged once by the caller.
    pub fn for_each_change(&self) -> Error {
        match self {
            Error::Unavailable(message) => Error::Unavailable(message.clone()),
            other => Error::Unavailable(format!("the batch holding this change failed: {other}")),
        }
    }

    /// A validation error about one field.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        Error::Validation(BTreeMap::from([(name.to_owned(), message.into())]))
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden(message.into())
    }

    /// The snake_case code of the contract's error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MalformedJson(_) => "malformed_json",
            Error::Validation(_) => "validation_failed",
            Error::Unauthenticated => "not_authenticated",
            Error::InvalidToken => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::InvalidCredentials => "invalid_credentials",
            Error::AccountDisabled => "account_disabled",
            Error::Forbidden(_) => "forbidden",
            Error::CrossSiteRequest => "cross_site_request",
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. } => code,
            Error::PayloadTooLarge => "payload_too_large",
            Error::RequestTimeout => "request_timeout",
            Error::TooManyAttempts { .. } => "too_many_attempts",
            Error::Busy { .. } => "service_unavailable",
            Error::Unavailable(_) => "service_unavailable",
            Error::Internal(_) => "internal_error",
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthenticated | Error::InvalidToken | Error::TokenExpired | Error::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            Error::AccountDisabled | Error::Forbidden(_) | Error::CrossSiteRequest => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Error::TooManyAttempts { retry_after_secs } | Error::Busy { retry_after_secs } = self {
            response.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        response.json(json!({ "error": ErrorBody::of(self) }))
    }
}

/// The contract's error body (§6): what REST answers and a `/ws` request's refusal carries.
#[derive(Debug, serde::Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<&'a BTreeMap<String, String>>,
}

impl<'a> ErrorBody<'a> {
    /// The one mapping from the crate's error to what a client is told.
    pub fn of(error: &'a Error) -> ErrorBody<'a> {
        ErrorBody {
            code: error.code(),
            message: error.public_message(),
            fields: match error {
                Error::Validation(fields) => Some(fields),
                _ => None,
            },
        }
    }
}

impl Error {
    /// The sentence a client is shown — the one mapping REST, `/ws` actions and channels all use.
    /// What is not the caller's fault says only that it happened; its detail goes to the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "Internal server error".to_owned()
            }
            Error::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                "The database is unavailable; retry later".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<DieselError> for Error {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => Error::NotFound("Resource"),
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => Error::Conflict {
                code: "conflict",
                message: format!("Conflicts with an existing record: {}", info.message()),
            },
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Error::Unavailable(info.message().to_owned())
            }
            // PostgreSQL gave up on this transaction to let a concurrent one through: nothing was
            // changed and a retry may succeed. (Transitions take rows in one order, so a deadlock
            // would be a bug; it is still not the client's fault.)
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                Error::Unavailable(info.message().to_owned())
            }
            DieselError::DatabaseError(_, ref info) if info.message().contains("deadlock detected") => {
                tracing::error!(error = info.message(), "deadlock between transactions");
                Error::Unavailable(info.message().to_owned())
            }
            // A connection the server broke off (PostgreSQL restarting, or an administrator's
            // pg_terminate_backend) is reported with a message, not always as a closed connection.
            DieselError::DatabaseError(_, ref info) if is_connection_lost(info.message()) => {
                Error::Unavailable(info.message().to_owned())
            }
            // A transaction left broken by a lost connection: the connection is replaced.
            DieselError::BrokenTransactionManager => Error::Unavailable("the database connection broke".into()),
            // SQLite reports a writer that outlasted busy_timeout as a plain error; it is load, not a bug.
            DieselError::DatabaseError(_, ref info) if info.message().contains("database is locked") => {
                Error::Unavailable(info.message().to_owned())
            }
            other => Error::Internal(anyhow::Error::new(other).context("database error")),
        }
    }
}

/// PostgreSQL's and libpq's words for a connection that ended under the client.
fn is_connection_lost(message: &str) -> bool {
    const LOST: &[&str] = &[
        "terminating connection",
        "server closed the connection",
        "no connection to the server",
        "could not receive data from server",
        "could not send data to server",
        "connection to server",
        "the database system is shutting down",
        "the database system is starting up",
    ];
    LOST.iter().any(|words| message.contains(words))
}

impl From<diesel::r2d2::PoolError> for Error {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    /// A connection PostgreSQL broke off is the database's unavailability (503), however it is
    /// worded, and so is a batch that failed as a whole.
    #[test]
    fn a_lost_connection_is_unavailable() {
        for message in [
            "terminating connection due to administrator command",
            "server closed the connection unexpectedly",
        ] {
            let lost = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()));
            assert!(matches!(Error::from(lost), Error::Unavailable(_)), "{message}");
        }
        assert!(matches!(
            Error::from(DieselError::BrokenTransactionManager),
            Error::Unavailable(_)
        ));
        let other = DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new("syntax error".to_owned()));
        assert!(matches!(Error::from(other), Error::Internal(_)));
        let batch = Error::Internal(anyhow::anyhow!("anything"));
        assert!(matches!(batch.for_each_change(), Error::Unavailable(_)));
    }

    #[actix_web::test]
    async fn validation_errors_name_their_fields() {
        let resp = Error::field("email", "is not an email address").error_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: serde_json::Value = serde_json::from_slice(&to_bytes(resp.into_body()).await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["fields"]["email"], "is not an email address");
    }

    #[actix_web::test]
    async fn internal_errors_do_not_leak_details() {
        let error = Error::Internal(anyhow::anyhow!("secret detail"));
        assert_eq!(error.public_message(), "Internal server error");
        let resp = error.error_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = to_bytes(resp.into_body()).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("secret"), "{body}");
        assert!(body.contains("internal_error"), "{body}");
        let unavailable = Error::Unavailable("connection refused at db.internal:5432".into());
        assert!(!unavailable.public_message().contains("db.internal"));
    }
}
