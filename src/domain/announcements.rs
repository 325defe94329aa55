//! Station announcements: a message from a station's staff to everyone watching it ("closed for
//! maintenance in 10 minutes"). Nothing is stored but the event: it goes through the log like every
//! event, so it is ordered with the station's other events, reaches the station's feeds and the
//! all-stations feed, and is replayed on resume.

use serde::Serialize;

use super::ids::StationId;
use super::stations;
use super::values::{Level, MessageText};
use super::Change;
use crate::auth::{policy, Caller};
use crate::clock::serialize_iso;
use crate::error::Result;
use crate::events::{Audience, EventBody};

/// What staff say, validated.
#[derive(Clone, Debug)]
pub struct Announcement {
    pub message: String,
    pub level: Level,
}

impl Announcement {
    pub fn parse(message: &str, level: Option<Level>) -> Result<Announcement> {
        Ok(Announcement {
            message: MessageText::parse(message)?,
            level: level.unwrap_or(Level::Info),
        })
    }
}

/// What the announcing request is answered with: the announcement as its event carries it (the
/// event's id is the feeds' business; a retry with the same `Idempotency-Key` gets this back and
/// announces nothing again).
#[derive(Clone, Debug, Serialize)]
pub struct AnnouncementView {
    pub station_id: StationId,
    pub station_name: String,
    pub message: String,
    pub level: Level,
    #[serde(serialize_with = "serialize_iso")]
    pub timestamp: i64,
}

/// Announces at a station: admins and the station's operator only (an unknown station is 404
/// before anyone's role is looked at, as for every station route).
pub fn announce(
    ch: &mut Change,
    actor: &Caller,
    station_id: StationId,
    announcement: &Announcement,
) -> Result<AnnouncementView> {
    let station = stations::load(ch.conn, station_id)?;
    policy::require_station_staff(actor, stations::operator_of(&station))?;
    let view = AnnouncementView {
        station_id,
        station_name: station.name,
        message: announcement.message.clone(),
        level: announcement.level,
        timestamp: ch.now,
    };
    ch.emit(
        Audience::Station(station_id),
        EventBody::StationAnnouncement {
            station_id,
            station_name: view.station_name.clone(),
            message: view.message.clone(),
            level: view.level,
        },
    );
    Ok(view)
}
