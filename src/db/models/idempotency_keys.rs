use diesel::prelude::*;

use crate::db::schema::idempotency_keys;

/// The first response to a request that carried an `Idempotency-Key`, replayed to its retries.
#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = idempotency_keys)]
pub struct IdempotencyKey {
    pub user_id: i64,
    pub idem_key: String,
    pub request_hash: String,
    pub status: i32,
    pub body: String,
    pub created_at: i64,
}
