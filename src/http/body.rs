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

pub use crate::domain::input::{double_option, parse};

use crate::domain::Page;
use crate::error::{Error, Result};

/// Largest REST request body; every body the API takes is a small object — but a batch of
/// telemetry ([`BATCH_BODY_BYTES`]).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest batch body: a thousand readings with the longest serials (64 characters, each up to
/// twelve bytes as a JSON escape) and room to spare.
pub const BATCH_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body of at most `LIMIT` bytes parsed into `T`, with the raw bytes kept for idempotency
/// fingerprints.
pub struct Body<T, const LIMIT: usize = MAX_BODY_BYTES> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned + 'static, const LIMIT: usize> FromRequest for Body<T, LIMIT> {
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Body<T, LIMIT>>>;

    fn from_request(_: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let payload = payload.take();
        Box::pin(async move {
            let raw = read_limited(payload, LIMIT).await?;
            Ok(Body {
                value: parse(&raw)?,
                raw,
            })
        })
    }
}

/// The whole body, refused past `limit` bytes or [`BODY_READ_TIMEOUT`].
async fn read_limited(mut payload: Payload, limit: usize) -> Result<Bytes> {
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            // The transport's own words (actix's payload errors) are not for clients.
            let chunk = chunk.map_err(|_| Error::MalformedJson("the body could not be read".into()))?;
            if buf.len() + chunk.len() > limit {
                return Err(Error::PayloadTooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .map_err(|_| Error::RequestTimeout)?
}

/// A body of at most 64 KiB that takes longer than this is a client holding a worker's
/// connection open on purpose (or a broken one): 408. (Headers have actix-http's own timeout.)
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
            let raw = read_limited(payload, MAX_BODY_BYTES).await?;
            if !raw.iter().all(u8::is_ascii_whitespace) {
                parse::<serde_json::Map<String, serde_json::Value>>(&raw)?;
            }
            Ok(NoBody)
        })
    }
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
