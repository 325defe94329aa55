//! Notifications: persisted per user, announced to that user's connections alone.

use diesel::prelude::*;
use serde::Serialize;

use super::ids::{NotificationId, UserId};
use super::values::Level;
use super::{users, Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::{serialize_iso, serialize_iso_opt};
use crate::db::models::{NewNotification, Notification};
use crate::db::schema::{notifications, users as users_table};
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::{Audience, EventBody};

#[derive(Clone, Debug, Serialize)]
pub struct NotificationView {
    pub id: NotificationId,
    pub title: String,
    pub message: String,
    pub level: Level,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
    #[serde(serialize_with = "serialize_iso_opt")]
    pub read_at: Option<i64>,
}

impl NotificationView {
    fn from_row(row: Notification) -> Result<NotificationView> {
        Ok(NotificationView {
            id: NotificationId(row.id),
            level: Level::from_db(&row.level)?,
            title: row.title,
            message: row.message,
            created_at: row.created_at,
            read_at: row.read_at,
        })
    }
}

/// The caller's own notifications, newest first.
pub fn list(conn: &mut DbConn, actor: &Caller, page: Page) -> Result<Listing<NotificationView>> {
    let mut query = notifications::table
        .filter(notifications::user_id.eq(actor.id.0))
        .select(Notification::as_select())
        .order(notifications::id.desc())
        .limit(page.fetch())
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(notifications::id.lt(after));
    }
    Listing::from_rows(page, query.load(conn)?, |n| n.id, NotificationView::from_row)
}

/// Another user's notification is reported as missing (404), not forbidden: its existence is private.
pub fn mark_read(ch: &mut Change, actor: &Caller, id: NotificationId) -> Result<NotificationView> {
    let own = notifications::table
        .filter(notifications::id.eq(id.0))
        .filter(notifications::user_id.eq(actor.id.0));
    let current: Notification = own
        .select(Notification::as_select())
        .first(ch.conn)
        .optional()?
        .ok_or(Error::NotFound("Notification"))?;
    if current.read_at.is_some() {
        return NotificationView::from_row(current);
    }
    let row: Notification = diesel::update(own)
        .set(notifications::read_at.eq(ch.now))
        .returning(notifications::all_columns)
        .get_result(ch.conn)?;
    NotificationView::from_row(row)
}

pub enum Recipients {
    User(UserId),
    /// Every active user.
    All,
}

pub struct NotificationInput {
    pub title: String,
    pub message: String,
    pub level: Level,
}

/// An admin notifies one user or everyone; returns what was stored, one per recipient.
pub fn send(
    ch: &mut Change,
    actor: &Caller,
    to: &Recipients,
    input: &NotificationInput,
) -> Result<Vec<NotificationView>> {
    policy::require_admin(actor)?;
    let recipients: Vec<i64> = match to {
        Recipients::User(id) => vec![users::get(ch.conn, *id)?.id],
        Recipients::All => users_table::table
            .filter(users_table::active.eq(true))
            .order(users_table::id.asc())
            .select(users_table::id)
            .load(ch.conn)?,
    };
    let mut sent = Vec::with_capacity(recipients.len());
    for user_id in recipients {
        let row: Notification = diesel::insert_into(notifications::table)
            .values(NewNotification {
                user_id,
                title: &input.title,
                message: &input.message,
                level: input.level.as_str(),
                created_at: ch.now,
            })
            .returning(notifications::all_columns)
            .get_result(ch.conn)?;
        ch.emit(
            Audience::User(UserId(user_id)),
            EventBody::Notification {
                title: input.title.clone(),
                message: input.message.clone(),
                level: input.level,
            },
        );
        sent.push(NotificationView::from_row(row)?);
    }
    Ok(sent)
}
