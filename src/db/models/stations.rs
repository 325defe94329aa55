use diesel::prelude::*;

use crate::db::schema::stations;

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = stations)]
pub struct Station {
    pub id: i64,
    pub name: String,
    pub address: Option<String>,
    pub status: String,
    pub operator_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Counts kept by `domain::transition` in the transaction of every battery change.
    pub available_batteries: i32,
    pub booked_batteries: i32,
    pub charging_batteries: i32,
    pub total_batteries: i32,
}

#[derive(Insertable)]
#[diesel(table_name = stations)]
pub struct NewStation<'a> {
    pub name: &'a str,
    pub address: Option<&'a str>,
    pub status: &'a str,
    pub operator_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The columns a station update sets; `None` leaves a column as it is (`Some(None)` clears it).
#[derive(AsChangeset)]
#[diesel(table_name = stations)]
pub struct StationChange<'a> {
    pub name: Option<&'a str>,
    pub address: Option<Option<&'a str>>,
    pub status: Option<&'a str>,
    pub operator_id: Option<Option<i64>>,
    pub updated_at: i64,
}
