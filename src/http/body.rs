//! Request input at the edge: JSON bodies and query strings parsed into typed values, every failure
//! mapped to the contract's errors (400 for text that is not JSON, 422 naming the field for a
//! missing or ill-typed one, 413 past the size limit).

use std::collections::HashMap;

use actix_web::dev::Payload;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::domain::Page;
use crate::error::{Error, Result};

/// Largest REST request body; every body the API takes is a small object.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body parsed into `T`, with the raw bytes kept for idempotency fingerprints.
pub struct Body<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned + 'static> FromRequest for Body<T> {
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Body<T>>>;

    fn from_request(_: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        Box::pin(async move {
            let raw = read_limited(payload).await?;
            Ok(Body {
                value: parse(&raw)?,
                raw,
            })
        })
    }
}

/// The whole body, refused past [`MAX_BODY_BYTES`].
async fn read_limited(mut payload: Payload) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::MalformedJson(e.to_string()))?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Error::PayloadTooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The body of a request that needs none (`POST /bookings/{id}/cancel`): empty, or a JSON object
/// whose fields are ignored (clients send `{}`). Anything else is refused as any body would be, so
/// a malformed request never goes through.
pub struct NoBody;

impl FromRequest for NoBody {
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<NoBody>>;

    fn from_request(_: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        Box::pin(async move {
            let raw = read_limited(payload).await?;
            if !raw.iter().all(u8::is_ascii_whitespace) {
                parse::<serde_json::Map<String, serde_json::Value>>(&raw)?;
            }
            Ok(NoBody)
        })
    }
}

/// Parses JSON, telling text that is not JSON (400) from JSON of the wrong shape (422, by field).
/// Bodies must be objects: serde would otherwise fill a struct from an array by position.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| Error::MalformedJson(strip_position(&e.to_string())))?;
    from_value(value)
}

/// Parses an already-decoded JSON object (a REST body, or the `data` of a WebSocket request).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    if !value.is_object() {
        return Err(Error::field("body", "must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_position(&e.into_inner().to_string());
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(missing) if path == "." => missing.to_owned(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        Error::field(&field, message)
    })
}

/// serde_json appends " at line L column C"; the field name says more to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH bodies.
pub fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(de: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

/// The query string as a map; repeated keys keep the last value.
pub fn query(req: &HttpRequest) -> Result<HashMap<String, String>> {
    actix_web::web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|_| Error::field("query", "is not a valid query string"))
}

/// `limit` and `cursor` of a list request.
pub fn page(query: &HashMap<String, String>) -> Result<Page> {
    Page::parse(
        query.get("limit").map(String::as_str),
        query.get("cursor").map(String::as_str),
    )
}

/// An optional integer query parameter.
pub fn int_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>> {
    query
        .get(name)
        .map(|raw| raw.parse::<i64>().map_err(|_| Error::field(name, "must be an integer")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        email: String,
        #[allow(dead_code)]
        soc: Option<i64>,
    }

    fn field_of(raw: &str) -> String {
        match parse::<Sample>(raw.as_bytes()) {
            Err(Error::Validation(fields)) => fields.keys().next().unwrap().clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn non_json_is_malformed() {
        for raw in ["", "{", "not json", "{\"email\":\"a\"} trailing"] {
            assert!(
                matches!(parse::<Sample>(raw.as_bytes()), Err(Error::MalformedJson(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(field_of("{}"), "email");
        assert_eq!(field_of(r#"{"email": 5}"#), "email");
        assert_eq!(field_of(r#"{"email": "a", "soc": "full"}"#), "soc");
        assert_eq!(field_of("[1]"), "body");
    }
}
