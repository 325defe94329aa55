use diesel::prelude::*;

use crate::db::schema::batteries;

#[derive(Queryable, QueryableByName, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = batteries)]
pub struct Battery {
    pub id: i64,
    pub station_id: i64,
    pub serial: String,
    pub model: String,
    pub status: String,
    pub soc: i32,
    pub soh: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = batteries)]
pub struct NewBattery<'a> {
    pub station_id: i64,
    pub serial: &'a str,
    pub model: &'a str,
    pub status: &'a str,
    pub soc: i32,
    pub soh: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The columns a battery transition sets; `None` leaves a column as it is.
#[derive(AsChangeset)]
#[diesel(table_name = batteries)]
pub struct BatteryChange<'a> {
    pub status: Option<&'a str>,
    pub station_id: Option<i64>,
    pub soc: Option<i32>,
    pub soh: Option<i32>,
    pub updated_at: i64,
}
