use diesel::prelude::*;

use crate::db::schema::refresh_tokens;

/// Only the SHA-256 of a refresh token is stored: a leaked table cannot be replayed.
#[derive(Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct NewRefreshToken<'a> {
    pub user_id: i64,
    pub token_hash: &'a str,
    pub expires_at: i64,
    pub created_at: i64,
    /// The sign-in session this token continues.
    pub session_id: Option<i64>,
}
