//! The battery-swap domain: one service per aggregate. Each operation checks the caller against
//! [`crate::auth::policy`], validates, changes rows inside one transaction ([`commit`]) and
//! returns the events that change produced — the "model hooks" the realtime hub consumes. Every
//! move of a booking, battery or station out of a state goes through [`transition`], which makes
//! it exclusive.

pub mod additions;
pub mod announcements;
pub mod batteries;
pub mod bookings;
pub mod commit;
pub mod ids;
pub mod import;
pub mod input;
pub mod notifications;
pub mod stations;
pub mod telemetry;
pub mod transition;
pub mod users;
pub mod values;

use serde::Serialize;

use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::{Audience, Event, EventBody};

/// One change in progress: the open transaction, its clock, and the events it will commit.
pub struct Change<'c> {
    pub conn: &'c mut DbConn,
    /// One timestamp for every row and event of the change.
    pub now: i64,
    pending: Vec<(Audience, EventBody)>,
    /// Each station's counts as this change's last update of them left them (the update returns
    /// them): the `inventory_update` it emits needs no second read of the row.
    counted: Vec<(i64, crate::events::Inventory)>,
}

impl<'c> Change<'c> {
    pub fn new(conn: &'c mut DbConn, now: i64) -> Change<'c> {
        Change {
            conn,
            now,
            pending: Vec::new(),
            counted: Vec::new(),
        }
    }

    pub fn emit(&mut self, audience: Audience, body: EventBody) {
        self.pending.push((audience, body));
    }

    /// The events emitted so far, taken out.
    pub fn take_pending(&mut self) -> Vec<(Audience, EventBody)> {
        std::mem::take(&mut self.pending)
    }

    /// A station's counts, as returned by this change's last update of them.
    pub fn counted(&mut self, station: i64, counts: crate::events::Inventory) {
        self.counted.retain(|(s, _)| *s != station);
        self.counted.push((station, counts));
    }

    pub fn counts_of(&self, station: i64) -> Option<crate::events::Inventory> {
        self.counted.iter().find(|(s, _)| *s == station).map(|(_, c)| c.clone())
    }
}

/// The result of a committed change and the events it produced, with their ids.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub events: Vec<Event>,
}

pub use commit::commit;

/// Keyset pagination: `after` is the id the previous page ended on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub after: Option<i64>,
}

impl Page {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 500;

    /// Parses the `limit` and `cursor` query parameters.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Page> {
        let limit = match limit {
            None => Self::DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=Self::MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(Error::field(
                        "limit",
                        format!("must be an integer from 1 to {}", Self::MAX_LIMIT),
                    ))
                }
            },
        };
        let after = match cursor {
            None | Some("") => None,
            Some(raw) => Some(
                raw.parse::<i64>()
                    .map_err(|_| Error::field("cursor", "is not a cursor this server issued"))?,
            ),
        };
        Ok(Page { limit, after })
    }

    /// The number of rows to fetch: one more than shown, to learn whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

/// A page of a list, as every list endpoint returns it.
#[derive(Debug, Serialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Listing<T> {
    /// Builds a page from `page.fetch()` rows; `key` gives the id the cursor continues from.
    pub fn from_rows<R>(
        page: Page,
        mut rows: Vec<R>,
        key: impl Fn(&R) -> i64,
        view: impl FnMut(R) -> Result<T>,
    ) -> Result<Listing<T>> {
        let more = rows.len() as i64 > page.limit;
        rows.truncate(page.limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| key(r).to_string())
        } else {
            None
        };
        let items = rows.into_iter().map(view).collect::<Result<Vec<T>>>()?;
        Ok(Listing { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(Page::parse(None, None).unwrap(), Page { limit: 50, after: None });
        assert_eq!(
            Page::parse(Some("500"), Some("7")).unwrap(),
            Page {
                limit: 500,
                after: Some(7)
            }
        );
        for bad in ["0", "501", "x", "-1"] {
            assert!(Page::parse(Some(bad), None).is_err());
        }
        assert!(Page::parse(None, Some("abc")).is_err());
    }

    #[test]
    fn listings_cut_at_the_limit() {
        let page = Page { limit: 2, after: None };
        let listing = Listing::from_rows(page, vec![1, 2, 3], |r| *r, Ok).unwrap();
        assert_eq!(listing.items, vec![1, 2]);
        assert_eq!(listing.next_cursor.as_deref(), Some("2"));
        let last = Listing::from_rows(page, vec![4], |r| *r, Ok).unwrap();
        assert_eq!(last.next_cursor, None);
    }
}
