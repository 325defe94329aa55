//! One file per table: the row as read (`Thing`) beside the row to insert (`NewThing`).
//! Rows hold plain columns; the domain turns them into typed values.

mod batteries;
mod bookings;
mod events;
mod idempotency_keys;
mod notifications;
mod refresh_tokens;
mod stations;
mod users;

pub use batteries::{Battery, BatteryChange, NewBattery};
pub use bookings::{Booking, BookingChange, NewBooking};
pub use events::EventRow;
pub use idempotency_keys::IdempotencyKey;
pub use notifications::{NewNotification, Notification};
pub use refresh_tokens::NewRefreshToken;
pub use stations::{NewStation, Station, StationChange};
pub use users::{NewUser, User};
