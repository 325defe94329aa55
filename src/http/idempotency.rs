//! `Idempotency-Key` (CONTRACT §5): the first successful response to a keyed request is stored in
//! the same transaction as the change it made, and a retry with the same key (same user, within
//! 24 h) gets that response back without changing or emitting anything again.
//!
//! Failed requests change nothing, so they are not stored: retrying one simply tries again.
//! Reusing a key for a different request is refused with 422.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use diesel::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::db::models::IdempotencyKey;
use crate::db::schema::idempotency_keys;
use crate::db::{on_unique_violation, DbConn};
use crate::domain::Change;
use crate::error::{Error, Result};
use crate::state::AppState;

pub const HEADER: &str = "Idempotency-Key";
/// How long a key is remembered.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;
const MAX_KEY_CHARS: usize = 255;
/// The status of a row whose request has not finished; no other transaction ever sees it, since
/// the row is completed before its transaction commits.
const IN_FLIGHT: i32 = 0;

enum Outcome {
    Fresh(String),
    Replay(IdempotencyKey),
}

/// Runs a creating change with `status` on success, honouring the request's `Idempotency-Key`.
pub async fn run<T, F>(
    state: &AppState,
    req: &HttpRequest,
    raw_body: &[u8],
    actor: &Caller,
    status: StatusCode,
    f: F,
) -> Result<HttpResponse>
where
    F: FnOnce(&mut Change) -> Result<T> + Send + 'static,
    T: Serialize + Send + 'static,
{
    let Some(key) = key_of(req)? else {
        let value = state.change(f).await?;
        return Ok(HttpResponse::build(status).json(value));
    };
    let user = actor.id.0;
    let fingerprint = fingerprint(req, raw_body);
    let fingerprint_in = fingerprint.clone();
    let retry_key = key.clone();
    let attempt = state
        .change(move |ch| {
            if let Some(stored) = find_live(ch.conn, user, &key, ch.now)? {
                return Ok(Outcome::Replay(stored));
            }
            diesel::insert_into(idempotency_keys::table)
                .values(IdempotencyKey {
                    user_id: user,
                    idem_key: key.clone(),
                    request_hash: fingerprint_in.clone(),
                    status: IN_FLIGHT,
                    body: String::new(),
                    created_at: ch.now,
                })
                .execute(ch.conn)
                .map_err(on_unique_violation(
                    "idempotency_race",
                    "A request with this key is in flight",
                ))?;
            let body = serde_json::to_string(&f(ch)?).map_err(anyhow::Error::from)?;
            diesel::update(idempotency_keys::table.find((user, &key)))
                .set((
                    idempotency_keys::status.eq(i32::from(status.as_u16())),
                    idempotency_keys::body.eq(&body),
                ))
                .execute(ch.conn)?;
            Ok(Outcome::Fresh(body))
        })
        .await;
    let outcome = match attempt {
        // A concurrent first request with this key committed while this one waited on its row.
        Err(Error::Conflict {
            code: "idempotency_race",
            ..
        }) => {
            let stored = state
                .read(move |conn| find_live(conn, user, &retry_key, crate::clock::now_ms()))
                .await?;
            Outcome::Replay(stored.ok_or_else(in_flight)?)
        }
        other => other?,
    };
    match outcome {
        Outcome::Fresh(body) => Ok(json_response(status, body)),
        Outcome::Replay(stored) => {
            if stored.request_hash != fingerprint {
                return Err(Error::field(HEADER, "was already used for a different request"));
            }
            let status = StatusCode::from_u16(stored.status as u16).map_err(anyhow::Error::from)?;
            let mut response = json_response(status, stored.body);
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
                actix_web::http::header::HeaderValue::from_static("true"),
            );
            Ok(response)
        }
    }
}

fn in_flight() -> Error {
    Error::conflict("idempotency_race", "A request with this key is in flight; retry")
}

fn json_response(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body(body)
}

/// The request's `Idempotency-Key`, if it has one (a malformed one is refused).
pub fn key_of(req: &HttpRequest) -> Result<Option<String>> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.chars().count() <= MAX_KEY_CHARS => Ok(Some(key.to_owned())),
        _ => Err(Error::field(
            HEADER,
            format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        )),
    }
}

/// What makes two requests "the same": method, path and body.
fn fingerprint(req: &HttpRequest, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(req.method().as_str());
    hash.update(b" ");
    hash.update(req.path().trim_end_matches('/'));
    hash.update(b"\n");
    // The same request is the same JSON, however it is spaced or its keys ordered: a client that
    // serializes its body again for a retry is replayed, not refused. (A body that is not JSON
    // never reaches here: it is refused with 400 first.)
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => canonical(&value, &mut hash),
        Err(_) => hash.update(body),
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `value` to the hash with its objects' keys in order and no spaces.
fn canonical(value: &serde_json::Value, hash: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hash.update(b"{");
            for key in keys {
                hash.update(Value::String(key.clone()).to_string());
                hash.update(b":");
                canonical(&map[key], hash);
                hash.update(b",");
            }
            hash.update(b"}");
        }
        Value::Array(items) => {
            hash.update(b"[");
            for item in items {
                canonical(item, hash);
                hash.update(b",");
            }
            hash.update(b"]");
        }
        scalar => hash.update(scalar.to_string()),
    }
}

/// The stored response for a key, if it is younger than a day; an older one is forgotten here.
fn find_live(conn: &mut DbConn, user: i64, key: &str, now: i64) -> Result<Option<IdempotencyKey>> {
    let stored = idempotency_keys::table
        .find((user, key))
        .select(IdempotencyKey::as_select())
        .first(conn)
        .optional()?;
    match stored {
        Some(row) if row.created_at <= now - KEY_TTL_MS => {
            diesel::delete(idempotency_keys::table.find((user, key))).execute(conn)?;
            Ok(None)
        }
        other => Ok(other),
    }
}

/// Forgets keys older than a day (the sweeper calls this).
pub fn prune(conn: &mut DbConn, now: i64) -> Result<usize> {
    Ok(
        diesel::delete(idempotency_keys::table.filter(idempotency_keys::created_at.le(now - KEY_TTL_MS)))
            .execute(conn)?,
    )
}
