use diesel::prelude::*;

use crate::db::schema::bookings;

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = bookings)]
pub struct Booking {
    pub id: i64,
    pub user_id: i64,
    pub station_id: i64,
    pub battery_id: i64,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub ready_at: Option<i64>,
    pub collected_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = bookings)]
pub struct NewBooking<'a> {
    pub user_id: i64,
    pub station_id: i64,
    pub battery_id: i64,
    pub status: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
}

/// The columns a booking transition sets; `None` leaves a column as it is.
#[derive(AsChangeset)]
#[diesel(table_name = bookings)]
pub struct BookingChange<'a> {
    pub status: &'a str,
    pub updated_at: i64,
    pub ready_at: Option<i64>,
    pub collected_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}
