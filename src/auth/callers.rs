//! Who a signed-in caller is now (and that the sign-in session of their token is live), remembered
//! for a moment, so a request does not pay a database round trip (a hop to a database reader and
//! back) just to learn the caller's role.
//!
//! Freshness does not depend on the moment alone: every change to a user is announced through the
//! hub right after it commits ([`crate::realtime::Hub::user_changed`], and over the backplane to
//! the other nodes) — and so is the end of a sign-in session — and the announcement forgets the
//! user's entries first. [`FRESH_FOR`] only bounds how
//! long an announcement that never arrived (a NATS outage) can leave a stale answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tokens::SignInId;
use super::Caller;
use crate::domain::ids::UserId;

/// Permission to remember what a read started now finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Past this many users the cache starts over rather than grow.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct CallerCache {
    entries: Mutex<Entries>,
}

/// The users remembered, with when they were read; and how many times one was forgotten so far.
type Entries = (HashMap<(UserId, SignInId), (Caller, Instant)>, u64);

impl CallerCache {
    /// The remembered user, or the ticket to [`put`](Self::put) them after reading them.
    pub fn get(&self, id: UserId, session: SignInId) -> Result<Caller, Ticket> {
        let (entries, forgotten) = &*self.lock();
        match entries.get(&(id, session)) {
            Some((actor, at)) if at.elapsed() < FRESH_FOR => Ok(actor.clone()),
            _ => Err(Ticket(*forgotten)),
        }
    }

    /// Remembers an active user as read from the database after `ticket` was issued — unless a
    /// user was forgotten meanwhile: that read may predate the change that was announced.
    pub fn put(&self, actor: Caller, session: SignInId, ticket: Ticket) {
        let (entries, forgotten) = &mut *self.lock();
        if *forgotten != ticket.0 {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert((actor.id, session), (actor, Instant::now()));
    }

    pub fn forget(&self, id: UserId) {
        let (entries, forgotten) = &mut *self.lock();
        // Rare (an admin's change, a logout): a walk over the entries is cheap enough.
        entries.retain(|(user, _), _| *user != id);
        *forgotten += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::values::Role;

    const S: SignInId = SignInId(7);

    fn actor(id: i64) -> Caller {
        Caller {
            id: UserId(id),
            role: Role::Operator,
            email: format!("u{id}@example.com"),
            display_name: format!("U{id}"),
        }
    }

    #[test]
    fn remembers_until_forgotten() {
        let cache = CallerCache::default();
        let ticket = cache.get(UserId(1), S).unwrap_err();
        cache.put(actor(1), S, ticket);
        assert_eq!(cache.get(UserId(1), S), Ok(actor(1)));
        // Another session of the same user is another entry.
        assert!(cache.get(UserId(1), SignInId(8)).is_err());
        cache.forget(UserId(1));
        assert!(cache.get(UserId(1), S).is_err());
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_remembered() {
        let cache = CallerCache::default();
        let ticket = cache.get(UserId(1), S).unwrap_err();
        // The change commits and is announced while the read is on its way back.
        cache.forget(UserId(1));
        cache.put(actor(1), S, ticket);
        assert!(cache.get(UserId(1), S).is_err());
    }

    #[test]
    fn entries_go_stale() {
        let cache = CallerCache::default();
        cache
            .lock()
            .0
            .insert((UserId(2), S), (actor(2), Instant::now() - FRESH_FOR));
        assert!(cache.get(UserId(2), S).is_err());
    }
}
