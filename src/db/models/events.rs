use diesel::prelude::*;

use crate::db::schema::events;

/// One row of the event log; `id` is the event_id. Read and written as a whole.
#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: i64,
    pub kind: String,
    pub station_id: Option<i64>,
    pub user_id: Option<i64>,
    pub payload: String,
    pub created_at: i64,
}
