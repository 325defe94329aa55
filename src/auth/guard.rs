//! What stands between a password guesser and the accounts (CONTRACT §3.1): a per-account count
//! of failed sign-ins, and a bound on how many password hashes run at once.
//!
//! Argon2id takes 19 MiB and tens of milliseconds per hash by design. Unbounded, a flood of
//! sign-ins queues hashes without end on the blocking pool — memory grows by gigabytes and every
//! other sign-in waits behind the flood. With a bound, a flood waits briefly for a turn and is
//! then told to come back (503, `Retry-After`), and requests that need no hash never notice.
//!
//! Hashes run on threads of their own, as many as turns: on the shared blocking pool each of its
//! hundreds of threads would keep its own 19 MiB in its allocator arena after hashing once, and
//! the bound on turns would not bound memory (measured: 3.2 GB after a 10 s flood).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::mpsc;

use tokio::sync::{oneshot, Semaphore};

use crate::error::{Error, Result};

/// Failed sign-ins for one email are counted over this window.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a sign-in waits for a turn to hash before it is told to retry.
const HASH_WAIT: Duration = Duration::from_secs(2);
/// What a refused sign-in is told to wait (seconds) when no turn came.
const HASH_RETRY_AFTER_SECS: u64 = 1;
/// Accounts whose failures are remembered at once; past this, the oldest are forgotten first.
const MAX_TRACKED: usize = 100_000;

type Failures = HashMap<String, VecDeque<Instant>>;

/// Makes room for one more account: forgets those whose attempts are all past the window, or
/// else the one whose last attempt is oldest.
fn forget_oldest(failures: &mut Failures, now: Instant) {
    failures.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < ATTEMPT_WINDOW));
    if failures.len() >= MAX_TRACKED {
        let oldest = failures
            .iter()
            .min_by_key(|(_, times)| times.back().copied())
            .map(|(email, _)| email.clone());
        if let Some(oldest) = oldest {
            failures.remove(&oldest);
        }
    }
}

pub struct LoginGuard {
    /// Attempts per email (lowercase), oldest first, within the window.
    failures: Mutex<Failures>,
    /// `SWAPCAST_LOGIN_ATTEMPTS`; 0 = no throttle.
    attempts: u32,
    hashing: Semaphore,
    /// The hashing threads' queue (never longer than the turns handed out).
    hashers: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl LoginGuard {
    /// `hashers`: how many hashes may run at once (the machine's cores are a good bound).
    pub fn new(attempts: u32, hashers: usize) -> LoginGuard {
        let hashers = hashers.max(1);
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let queue = std::sync::Arc::new(Mutex::new(queue));
        for n in 0..hashers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{n}"))
                .spawn(move || loop {
                    // Ends when the guard (the sender) is gone.
                    let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        LoginGuard {
            failures: Mutex::default(),
            attempts,
            hashing: Semaphore::new(hashers),
            hashers: Mutex::new(jobs),
        }
    }

    /// Takes one of the account's attempts before its password is checked, or refuses the
    /// sign-in — the right password too, so guessing on cannot tell a right one from a wrong
    /// one — with how long to wait. Taking the attempt first is what holds the limit under
    /// concurrency: sign-ins waiting for a hashing turn have all counted already. A sign-in that
    /// never got its password checked gives the attempt back ([`release`](Self::release)); a
    /// wrong password keeps it; a right one clears the account ([`succeeded`](Self::succeeded)).
    pub fn reserve(&self, email: &str) -> Result<Instant> {
        let now = Instant::now();
        self.reserve_at(email, now)?;
        Ok(now)
    }

    fn reserve_at(&self, email: &str, now: Instant) -> Result<()> {
        if self.attempts == 0 {
            return Ok(());
        }
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(email) {
            forget_oldest(&mut failures, now);
        }
        let times = failures.entry(email.to_owned()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW) {
            times.pop_front();
        }
        if times.len() >= self.attempts as usize {
            // Free again once the oldest counted attempt leaves the window.
            let oldest = *times.front().expect("at least `attempts` attempts");
            let wait = ATTEMPT_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(Error::TooManyAttempts {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        times.push_back(now);
        Ok(())
    }

    /// Gives back an attempt whose password was never checked (no hashing turn, no database).
    pub fn release(&self, email: &str, at: Instant) {
        let mut failures = self.lock();
        if let Some(times) = failures.get_mut(email) {
            if let Some(i) = times.iter().position(|t| *t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                failures.remove(email);
            }
        }
    }

    /// A right password outside a throttle: the account starts afresh.
    pub fn succeeded(&self, email: &str) {
        self.lock().remove(email);
    }

    /// Runs `work` (a password hash or verification) on a hashing thread when a turn is free,
    /// or answers 503 with `Retry-After` after a brief wait for one.
    pub async fn hash<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _turn = match tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(Error::Busy {
                    retry_after_secs: HASH_RETRY_AFTER_SECS,
                })
            }
        };
        let (done, result) = oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            // The request may have gone meanwhile; the hash is simply not needed then.
            let _ = done.send(work());
        });
        self.hashers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| Error::Internal(anyhow::anyhow!("the password hashing threads stopped")))?;
        result
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("a password hash was dropped")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
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
            assert!(
                guard.reserve_at("a@x.test", start + Duration::from_secs(i)).is_ok(),
                "attempt {i}"
            );
        }
        let Err(Error::TooManyAttempts { retry_after_secs }) =
            guard.reserve_at("a@x.test", start + Duration::from_secs(10))
        else {
            panic!("the fourth attempt is refused");
        };
        assert_eq!(retry_after_secs, ATTEMPT_WINDOW.as_secs() - 10);
        // Others are not affected; the window passing frees the account.
        assert!(guard.reserve_at("b@x.test", start).is_ok());
        assert!(guard.reserve_at("a@x.test", start + ATTEMPT_WINDOW).is_ok());
    }

    #[test]
    fn attempts_count_when_taken_so_concurrent_guesses_cannot_pass_the_limit() {
        let guard = LoginGuard::new(3, 1);
        // Ten sign-ins arrive together, none checked yet: only three may go on to a hash.
        let now = Instant::now();
        let admitted = (0..10).filter(|_| guard.reserve_at("a@x.test", now).is_ok()).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn unchecked_attempts_are_given_back_and_success_starts_afresh() {
        let guard = LoginGuard::new(2, 1);
        let first = guard.reserve("a@x.test").unwrap();
        guard.release("a@x.test", first);
        guard.reserve("a@x.test").unwrap();
        guard.reserve("a@x.test").unwrap();
        assert!(guard.reserve("a@x.test").is_err());
        guard.succeeded("a@x.test");
        assert!(guard.reserve("a@x.test").is_ok());
        let open = LoginGuard::new(0, 1);
        for _ in 0..100 {
            assert!(open.reserve("a@x.test").is_ok());
        }
    }

    #[tokio::test]
    async fn hashing_is_bounded_and_a_flood_is_told_to_come_back() {
        let guard = std::sync::Arc::new(LoginGuard::new(10, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let guard = guard.clone();
            // Takes the one turn and keeps it until released.
            tokio::spawn(async move { guard.hash(move || hold.recv().is_ok()).await })
        };
        while guard.hashing.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // Nobody frees the one turn: the next waits its brief while, then is refused.
        let refused = guard.hash(|| 1).await;
        assert!(
            matches!(refused, Err(Error::Busy { retry_after_secs: 1 })),
            "{refused:?}"
        );
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        assert_eq!(guard.hash(|| 2).await.unwrap(), 2);
    }
}
