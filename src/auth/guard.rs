//! What stands between a password guesser and the accounts (CONTRACT §3.1): a per-account count
//! of failed sign-ins, and a bound on how many password hashes run at once.
//!
//! Argon2id takes 19 MiB and tens of milliseconds per hash by design. Unbounded, a flood of
//! sign-ins queues hashes without end on the blocking pool — memory grows by gigabytes and every
//! other sign-in waits behind the flood. With a bound, a flood waits briefly for a turn and is
//! then told to come back (503, `Retry-After`), and requests that need no hash never notice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, Result};

/// Failed sign-ins for one email are counted over this window.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a sign-in waits for a turn to hash before it is told to retry.
const HASH_WAIT: Duration = Duration::from_secs(2);
/// What a refused sign-in is told to wait (seconds) when no turn came.
const HASH_RETRY_AFTER_SECS: u64 = 1;
/// Accounts whose failures are remembered at once; past this, the oldest are forgotten first.
const MAX_TRACKED: usize = 100_000;

pub struct LoginGuard {
    /// Failed sign-ins per email (lowercase), oldest first, within the window.
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// `SWAPCAST_LOGIN_ATTEMPTS`; 0 = no throttle.
    attempts: u32,
    hashing: Semaphore,
}

impl LoginGuard {
    /// `hashers`: how many hashes may run at once (the machine's cores are a good bound).
    pub fn new(attempts: u32, hashers: usize) -> LoginGuard {
        LoginGuard {
            failures: Mutex::default(),
            attempts,
            hashing: Semaphore::new(hashers.max(1)),
        }
    }

    /// Refuses a sign-in for an account with too many recent failures — whatever the password,
    /// so guessing on cannot tell a right one from a wrong one — with how long to wait.
    pub fn check(&self, email: &str) -> Result<()> {
        self.check_at(email, Instant::now())
    }

    fn check_at(&self, email: &str, now: Instant) -> Result<()> {
        if self.attempts == 0 {
            return Ok(());
        }
        let mut failures = self.lock();
        let Some(times) = failures.get_mut(email) else {
            return Ok(());
        };
        while times.front().is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW) {
            times.pop_front();
        }
        if times.len() < self.attempts as usize {
            return Ok(());
        }
        // Free again once the oldest counted failure leaves the window.
        let oldest = *times.front().expect("at least `attempts` failures");
        let wait = ATTEMPT_WINDOW.saturating_sub(now.duration_since(oldest));
        Err(Error::TooManyAttempts {
            retry_after_secs: wait.as_secs().max(1),
        })
    }

    pub fn failed(&self, email: &str) {
        self.failed_at(email, Instant::now());
    }

    fn failed_at(&self, email: &str, now: Instant) {
        if self.attempts == 0 {
            return;
        }
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(email) {
            failures.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < ATTEMPT_WINDOW));
            if failures.len() >= MAX_TRACKED {
                // Still full of live entries: forget the one whose last failure is oldest.
                let oldest = failures
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(email, _)| email.clone());
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let times = failures.entry(email.to_owned()).or_default();
        times.push_back(now);
        // Only the newest `attempts` matter.
        while times.len() > self.attempts as usize {
            times.pop_front();
        }
    }

    /// A right password outside a throttle: the account starts afresh.
    pub fn succeeded(&self, email: &str) {
        self.lock().remove(email);
    }

    /// A turn to hash a password, or 503 with `Retry-After` after a brief wait.
    pub async fn hashing_turn(&self) -> Result<SemaphorePermit<'_>> {
        match tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Busy {
                retry_after_secs: HASH_RETRY_AFTER_SECS,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_throttled_after_its_attempts_until_the_window_passes() {
        let guard = LoginGuard::new(3, 1);
        let start = Instant::now();
        for i in 0..3 {
            assert!(guard.check_at("a@x.test", start).is_ok(), "attempt {i}");
            guard.failed_at("a@x.test", start + Duration::from_secs(i));
        }
        let Err(Error::TooManyAttempts { retry_after_secs }) =
            guard.check_at("a@x.test", start + Duration::from_secs(10))
        else {
            panic!("the fourth attempt is refused");
        };
        assert_eq!(retry_after_secs, ATTEMPT_WINDOW.as_secs() - 10);
        // Others are not affected; the window passing frees the account.
        assert!(guard.check_at("b@x.test", start).is_ok());
        assert!(guard.check_at("a@x.test", start + ATTEMPT_WINDOW).is_ok());
    }

    #[test]
    fn success_starts_afresh_and_zero_means_no_throttle() {
        let guard = LoginGuard::new(2, 1);
        let now = Instant::now();
        guard.failed_at("a@x.test", now);
        guard.succeeded("a@x.test");
        guard.failed_at("a@x.test", now);
        assert!(guard.check_at("a@x.test", now).is_ok());
        let open = LoginGuard::new(0, 1);
        for _ in 0..100 {
            open.failed_at("a@x.test", now);
        }
        assert!(open.check_at("a@x.test", now).is_ok());
    }

    #[tokio::test]
    async fn hashing_is_bounded_and_a_flood_is_told_to_come_back() {
        let guard = LoginGuard::new(10, 1);
        let held = guard.hashing_turn().await.unwrap();
        // Nobody frees the one turn: the next waits its brief while, then is refused.
        let refused = guard.hashing_turn().await;
        assert!(
            matches!(refused, Err(Error::Busy { retry_after_secs: 1 })),
            "{refused:?}"
        );
        drop(held);
        assert!(guard.hashing_turn().await.is_ok());
    }
}
