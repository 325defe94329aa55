//! Sign-in sessions: an access token plus a refresh token that rotates on every use, so a stolen
//! refresh token works at most once and a used one is dead.

use diesel::prelude::*;
use serde::Serialize;

use super::tokens::{self, TokenKeys};
use crate::db::models::{NewRefreshToken, User};
use crate::db::schema::refresh_tokens;
use crate::db::DbConn;
use crate::domain::ids::UserId;
use crate::domain::users::{self, UserView};
use crate::error::{Error, Result};

/// The body of a successful login or refresh (CONTRACT §3).
#[derive(Debug, Serialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: UserView,
}

/// Opens a session for a user whose password was already checked.
pub fn start(conn: &mut DbConn, keys: &TokenKeys, refresh_ttl: u64, user: User, now: i64) -> Result<Session> {
    if !user.active {
        return Err(Error::AccountDisabled);
    }
    let view = UserView::from_row(user)?;
    let refresh_token = tokens::random_secret();
    diesel::insert_into(refresh_tokens::table)
        .values(NewRefreshToken {
            user_id: view.id.0,
            token_hash: &tokens::digest(&refresh_token),
            expires_at: now + (refresh_ttl as i64) * 1000,
            created_at: now,
        })
        .execute(conn)?;
    Ok(Session {
        access_token: keys.issue(view.id, view.role)?,
        token_type: "Bearer",
        expires_in: keys.access_ttl,
        refresh_token,
        user: view,
    })
}

/// Trades a live refresh token for a new session. The delete is the claim: of two concurrent
/// refreshes with one token, only one deletes the row and the other gets 401.
pub fn rotate(conn: &mut DbConn, keys: &TokenKeys, refresh_ttl: u64, presented: &str, now: i64) -> Result<Session> {
    let claimed: Vec<i64> = diesel::delete(
        refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(tokens::digest(presented)))
            .filter(refresh_tokens::expires_at.gt(now)),
    )
    .returning(refresh_tokens::user_id)
    .get_results(conn)?;
    let user_id = claimed.first().copied().ok_or(Error::InvalidToken)?;
    let user = users::get(conn, UserId(user_id)).map_err(|_| Error::InvalidToken)?;
    start(conn, keys, refresh_ttl, user, now)
}

/// Ends a session; ending an unknown or already-ended one is not an error.
pub fn end(conn: &mut DbConn, presented: &str) -> Result<()> {
    diesel::delete(refresh_tokens::table.filter(refresh_tokens::token_hash.eq(tokens::digest(presented))))
        .execute(conn)?;
    Ok(())
}

/// Expired refresh tokens are useless; the sweeper removes them.
pub fn prune(conn: &mut DbConn, now: i64) -> Result<usize> {
    Ok(diesel::delete(refresh_tokens::table.filter(refresh_tokens::expires_at.le(now))).execute(conn)?)
}
