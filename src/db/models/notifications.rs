use diesel::prelude::*;

use crate::db::schema::notifications;

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub id: i64,
    pub user_id: i64,
    pub title: String,
    pub message: String,
    pub level: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = notifications)]
pub struct NewNotification<'a> {
    pub user_id: i64,
    pub title: &'a str,
    pub message: &'a str,
    pub level: &'a str,
    pub created_at: i64,
}
