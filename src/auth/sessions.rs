//! Sign-in sessions (CONTRACT §3 v2). A login starts one; each refresh rotates its refresh token
//! and continues it; every access token names it (`sid`). Ending a session — logout, deactivation,
//! or a rotated refresh token presented again — refuses its access tokens from then on and closes
//! its live connections (the caller announces the change through the hub after the commit).
//!
//! A rotated refresh token is kept, marked used, until it expires: that is how a second use is
//! recognised. A stolen token and whatever its thief got for it die together with the session.

use diesel::prelude::*;
use serde::Serialize;

use super::tokens::{self, SignInId, TokenKeys};
use crate::db::models::{NewRefreshToken, User};
use crate::db::schema::{refresh_tokens, sign_in_sessions};
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
    let id: i64 = diesel::insert_into(sign_in_sessions::table)
        .values((
            sign_in_sessions::user_id.eq(user.id),
            sign_in_sessions::created_at.eq(now),
        ))
        .returning(sign_in_sessions::id)
        .get_result(conn)?;
    issue(conn, keys, refresh_ttl, user, SignInId(id), now)
}

/// A new token pair for a live session.
fn issue(
    conn: &mut DbConn,
    keys: &TokenKeys,
    refresh_ttl: u64,
    user: User,
    session: SignInId,
    now: i64,
) -> Result<Session> {
    let view = UserView::from_row(user)?;
    let refresh_token = tokens::random_secret();
    diesel::insert_into(refresh_tokens::table)
        .values(NewRefreshToken {
            user_id: view.id.0,
            token_hash: &tokens::digest(&refresh_token),
            expires_at: now + (refresh_ttl as i64) * 1000,
            created_at: now,
            session_id: Some(session.0),
        })
        .execute(conn)?;
    Ok(Session {
        access_token: keys.issue(view.id, view.role, session)?,
        token_type: "Bearer",
        expires_in: keys.access_ttl,
        refresh_token,
        user: view,
    })
}

/// What presenting a refresh token came to.
#[derive(Debug)]
pub enum Rotation {
    /// A new pair for the same session.
    Rotated(Session),
    /// The token had been used already: its session is ended (commit, announce, then answer 401).
    Reused(UserId),
}

/// Trades a live refresh token for a new pair in the same session. Marking the token used is a
/// conditional update: of two concurrent refreshes with one token exactly one rotates it, and the
/// other is a second use.
pub fn rotate(conn: &mut DbConn, keys: &TokenKeys, refresh_ttl: u64, presented: &str, now: i64) -> Result<Rotation> {
    let digest = tokens::digest(presented);
    let claimed: Option<(i64, Option<i64>)> = diesel::update(
        refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(&digest))
            .filter(refresh_tokens::used_at.is_null())
            .filter(refresh_tokens::expires_at.gt(now)),
    )
    .set(refresh_tokens::used_at.eq(now))
    .returning((refresh_tokens::user_id, refresh_tokens::session_id))
    .get_result(conn)
    .optional()?;
    let Some((user_id, Some(session))) = claimed else {
        let used: Option<(i64, Option<i64>)> = refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(&digest))
            .filter(refresh_tokens::used_at.is_not_null())
            .select((refresh_tokens::user_id, refresh_tokens::session_id))
            .first(conn)
            .optional()?;
        return match used {
            Some((user, Some(session))) => {
                end_session(conn, SignInId(session), now)?;
                tracing::warn!(
                    user,
                    session,
                    "a rotated refresh token was presented again; its session is ended"
                );
                Ok(Rotation::Reused(UserId(user)))
            }
            _ => Err(Error::InvalidToken),
        };
    };
    let session = SignInId(session);
    if !is_live(conn, UserId(user_id), session)? {
        return Err(Error::InvalidToken);
    }
    let user = users::get(conn, UserId(user_id)).map_err(|_| Error::InvalidToken)?;
    issue(conn, keys, refresh_ttl, user, session, now).map(Rotation::Rotated)
}

/// Whether a session of this user exists and has not ended.
pub fn is_live(conn: &mut DbConn, user: UserId, session: SignInId) -> Result<bool> {
    let ended: Option<Option<i64>> = sign_in_sessions::table
        .find(session.0)
        .filter(sign_in_sessions::user_id.eq(user.0))
        .select(sign_in_sessions::ended_at)
        .first(conn)
        .optional()?;
    Ok(matches!(ended, Some(None)))
}

/// Ends the session a refresh token belongs to (used or not); returns its user, or `None` for a
/// token this server does not know — logging out twice is not an error.
pub fn end(conn: &mut DbConn, presented: &str, now: i64) -> Result<Option<UserId>> {
    let found: Option<(i64, Option<i64>)> = refresh_tokens::table
        .filter(refresh_tokens::token_hash.eq(tokens::digest(presented)))
        .select((refresh_tokens::user_id, refresh_tokens::session_id))
        .first(conn)
        .optional()?;
    match found {
        Some((user, Some(session))) => {
            end_session(conn, SignInId(session), now)?;
            Ok(Some(UserId(user)))
        }
        _ => Ok(None),
    }
}

/// Ends every session of a user (logout everywhere; a deactivated account).
pub fn end_all(conn: &mut DbConn, user: UserId, now: i64) -> Result<()> {
    diesel::update(
        sign_in_sessions::table
            .filter(sign_in_sessions::user_id.eq(user.0))
            .filter(sign_in_sessions::ended_at.is_null()),
    )
    .set(sign_in_sessions::ended_at.eq(now))
    .execute(conn)?;
    diesel::delete(refresh_tokens::table.filter(refresh_tokens::user_id.eq(user.0))).execute(conn)?;
    Ok(())
}

fn end_session(conn: &mut DbConn, session: SignInId, now: i64) -> Result<()> {
    diesel::update(
        sign_in_sessions::table
            .find(session.0)
            .filter(sign_in_sessions::ended_at.is_null()),
    )
    .set(sign_in_sessions::ended_at.eq(now))
    .execute(conn)?;
    // Its refresh tokens can never be used again; the session row remembers it ended.
    diesel::delete(refresh_tokens::table.filter(refresh_tokens::session_id.eq(session.0))).execute(conn)?;
    Ok(())
}

/// Expired refresh tokens are useless, and so are sessions that ended longer ago than any access
/// token lives (`access_ttl` seconds) or that have no refresh token left; the sweeper removes them.
pub fn prune(conn: &mut DbConn, now: i64, access_ttl: u64) -> Result<usize> {
    let tokens = diesel::delete(refresh_tokens::table.filter(refresh_tokens::expires_at.le(now))).execute(conn)?;
    let ended_before = now - (access_ttl as i64) * 1000;
    let with_tokens = refresh_tokens::table
        .filter(refresh_tokens::session_id.is_not_null())
        .select(refresh_tokens::session_id.assume_not_null());
    let sessions = diesel::delete(
        sign_in_sessions::table.filter(
            sign_in_sessions::ended_at
                .lt(ended_before)
                .or(sign_in_sessions::ended_at.is_null().and(
                    sign_in_sessions::created_at
                        .lt(ended_before)
                        .and(diesel::dsl::not(sign_in_sessions::id.eq_any(with_tokens))),
                )),
        ),
    )
    .execute(conn)?;
    Ok(tokens + sessions)
}
