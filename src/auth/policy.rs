//! Who may do what (CONTRACT §2) — the only place these rules live. REST handlers, WebSocket
//! actions and subscriptions all ask here.

use super::Caller;
use crate::domain::ids::UserId;
use crate::domain::values::Role;
use crate::error::{Error, Result};

/// Reading stations and inventory: everyone, unless public feeds are turned off.
pub fn may_read_stations(caller: Option<&Caller>, public_feeds: bool) -> Result<()> {
    if public_feeds || caller.is_some() {
        Ok(())
    } else {
        Err(Error::Unauthenticated)
    }
}

/// Creating stations, assigning operators, retiring batteries, sending notifications, managing
/// users, reading the event log.
pub fn require_admin(actor: &Caller) -> Result<()> {
    if actor.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::forbidden("Only admins may do this"))
    }
}

/// Admins, and the operator assigned to the station.
pub fn is_station_staff(actor: &Caller, station_operator: Option<UserId>) -> bool {
    actor.role == Role::Admin || (actor.role == Role::Operator && station_operator == Some(actor.id))
}

/// Sending telemetry in batches: admins, and operators (each reading then for their own stations'
/// batteries, [`is_station_staff`]).
pub fn require_staff(actor: &Caller) -> Result<()> {
    if matches!(actor.role, Role::Admin | Role::Operator) {
        Ok(())
    } else {
        Err(Error::forbidden("Only admins and operators may do this"))
    }
}

/// Adding batteries, setting station status, marking bookings ready or collected, recording returns,
/// battery telemetry.
pub fn require_station_staff(actor: &Caller, station_operator: Option<UserId>) -> Result<()> {
    if is_station_staff(actor, station_operator) {
        Ok(())
    } else {
        Err(Error::forbidden("Only admins and this station's operator may do this"))
    }
}

/// Whether a caller sees personal data (`battery_booked.user`) of a station's events: its staff.
pub fn sees_personal_data(actor: Option<&Caller>, station_operator: Option<UserId>) -> bool {
    actor.is_some_and(|a| is_station_staff(a, station_operator))
}

/// Whether a caller could see personal data at any station (admins; operators, at their own).
/// For anyone else a subscription needs no look at which stations they operate.
pub fn may_see_personal_data_somewhere(actor: Option<&Caller>) -> bool {
    actor.is_some_and(|a| matches!(a.role, Role::Admin | Role::Operator))
}

/// Whether a caller's sight of personal data at a station turns on who operates it (operators):
/// for anyone else the answer is the same at every station.
pub fn personal_data_turns_on_operator(actor: Option<&Caller>) -> bool {
    actor.is_some_and(|a| a.role == Role::Operator)
}

/// Whether a caller sees personal data of every station, present and future: admins.
pub fn sees_all_personal_data(actor: Option<&Caller>) -> bool {
    actor.is_some_and(|a| a.role == Role::Admin)
}

/// Cancelling a booking: its owner, or an admin.
pub fn require_owner_or_admin(actor: &Caller, owner: UserId) -> Result<()> {
    if actor.role == Role::Admin || actor.id == owner {
        Ok(())
    } else {
        Err(Error::forbidden("This booking belongs to another user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: i64, role: Role) -> Caller {
        Caller {
            id: UserId(id),
            role,
            email: format!("{id}@x.test"),
            display_name: format!("U{id}"),
        }
    }

    #[test]
    fn station_staff_is_admin_or_own_operator() {
        assert!(is_station_staff(&actor(1, Role::Admin), None));
        assert!(is_station_staff(&actor(2, Role::Operator), Some(UserId(2))));
        assert!(!is_station_staff(&actor(2, Role::Operator), Some(UserId(3))));
        assert!(!is_station_staff(&actor(2, Role::Operator), None));
        // A user who was once the operator but was demoted loses the station.
        assert!(!is_station_staff(&actor(2, Role::User), Some(UserId(2))));
    }

    #[test]
    fn anonymous_reads_follow_the_public_feeds_setting() {
        assert!(may_read_stations(None, true).is_ok());
        assert!(matches!(may_read_stations(None, false), Err(Error::Unauthenticated)));
        assert!(may_read_stations(Some(&actor(1, Role::User)), false).is_ok());
    }

    #[test]
    fn who_sees_no_personal_data_anywhere_sees_it_at_no_station() {
        let operators = [None, Some(UserId(1)), Some(UserId(2))];
        let callers = [
            None,
            Some(actor(1, Role::Admin)),
            Some(actor(1, Role::Operator)),
            Some(actor(1, Role::User)),
        ];
        for caller in &callers {
            for operator in operators {
                if !may_see_personal_data_somewhere(caller.as_ref()) {
                    assert!(
                        !sees_personal_data(caller.as_ref(), operator),
                        "{caller:?} at {operator:?}"
                    );
                }
            }
        }
        assert!(!may_see_personal_data_somewhere(None));
        assert!(!may_see_personal_data_somewhere(Some(&actor(1, Role::User))));
        assert!(may_see_personal_data_somewhere(Some(&actor(1, Role::Operator))));
    }
}
