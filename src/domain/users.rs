//! Users: registration, lookup, and the admin's role and activity changes.

use diesel::prelude::*;
use serde::Serialize;

use super::ids::UserId;
use super::values::{Email, Role};
use super::{Change, Listing, Page};
use crate::auth::policy;
use crate::auth::Caller;
use crate::clock::serialize_iso;
use crate::db::models::{NewUser, User};
use crate::db::schema::users;
use crate::db::{on_unique_violation, DbConn};
use crate::error::{Error, Result};

/// A user as the API shows it (never the password hash).
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub active: bool,
    #[serde(serialize_with = "serialize_iso")]
    pub created_at: i64,
}

impl UserView {
    pub fn from_row(row: User) -> Result<UserView> {
        Ok(UserView {
            id: UserId(row.id),
            role: Role::from_db(&row.role)?,
            email: row.email,
            display_name: row.display_name,
            active: row.active,
            created_at: row.created_at,
        })
    }
}

pub struct Registration {
    pub email: Email,
    pub display_name: String,
    /// Already hashed: hashing is slow and happens before the transaction opens.
    pub password_hash: String,
}

pub fn create(ch: &mut Change, registration: &Registration, role: Role) -> Result<UserView> {
    let row: User = diesel::insert_into(users::table)
        .values(NewUser {
            email: registration.email.as_str(),
            display_name: &registration.display_name,
            role: role.as_str(),
            password_hash: &registration.password_hash,
            active: true,
            created_at: ch.now,
        })
        .returning(users::all_columns)
        .get_result(ch.conn)
        .map_err(on_unique_violation("email_taken", "This email is already registered"))?;
    UserView::from_row(row)
}

pub fn find_by_email(conn: &mut DbConn, email: &Email) -> Result<Option<User>> {
    Ok(users::table
        .filter(users::email.eq(email.as_str()))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn find(conn: &mut DbConn, id: UserId) -> Result<Option<User>> {
    Ok(users::table
        .find(id.0)
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn get(conn: &mut DbConn, id: UserId) -> Result<User> {
    find(conn, id)?.ok_or(Error::NotFound("User"))
}

pub fn list(conn: &mut DbConn, actor: &Caller, page: Page) -> Result<Listing<UserView>> {
    policy::require_admin(actor)?;
    let mut query = users::table
        .select(User::as_select())
        .order(users::id.asc())
        .limit(page.fetch())
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(users::id.gt(after));
    }
    Listing::from_rows(page, query.load(conn)?, |u| u.id, UserView::from_row)
}

#[derive(Debug, Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub active: Option<bool>,
    pub display_name: Option<String>,
}

/// An admin changes a user. (Deactivation also ends the user's sign-in sessions: the handler
/// does that in the same change, as `auth::sessions` sits above the domain.)
pub fn update(ch: &mut Change, actor: &Caller, id: UserId, patch: &UserPatch) -> Result<UserView> {
    policy::require_admin(actor)?;
    let current = get(ch.conn, id)?;
    if actor.id == id && (patch.role.is_some_and(|r| r != Role::Admin) || patch.active == Some(false)) {
        return Err(Error::conflict(
            "cannot_demote_self",
            "Admins cannot demote or deactivate themselves",
        ));
    }
    let role = patch.role.map(Role::as_str).unwrap_or(&current.role);
    let active = patch.active.unwrap_or(current.active);
    let display_name = patch.display_name.as_deref().unwrap_or(&current.display_name);
    let row: User = diesel::update(users::table.find(id.0))
        .set((
            users::role.eq(role),
            users::active.eq(active),
            users::display_name.eq(display_name),
        ))
        .returning(users::all_columns)
        .get_result(ch.conn)?;
    UserView::from_row(row)
}
