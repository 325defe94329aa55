//! What a client sends, before it reaches the session's logic: fragmented messages put back
//! together within the size limit, the per-connection rate limit, and the client message
//! vocabulary. Pure state, unit-tested here.

use std::time::{Duration, Instant};

use actix_http::ws::Item;
use actix_web::web::{Bytes, BytesMut};

/// A message rebuilt from its fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    Pending,
    Text(Bytes),
    Binary(Bytes),
    /// Over the size limit: the connection closes with 1009.
    TooBig,
    /// More fragments than a message of the size limit needs: the connection closes with 1008
    /// (empty fragments would otherwise never reach the size limit, nor the rate limit).
    TooManyFragments,
}

/// The fewest bytes a fragment carries on average before a message counts as a fragment flood.
const MIN_AVERAGE_FRAGMENT: usize = 64;

/// Continuation frames collected into one message. The codec already refuses frames out of order
/// (a continuation without a start, a new message inside a fragmented one), so this only collects
/// and bounds.
pub struct Reassembly {
    text: bool,
    buf: BytesMut,
    max: usize,
    /// Fragments of the message under way, and how many one message may have.
    fragments: usize,
    max_fragments: usize,
}

impl Reassembly {
    pub fn new(max: usize) -> Reassembly {
        Reassembly {
            text: false,
            buf: BytesMut::new(),
            max,
            fragments: 0,
            max_fragments: (max / MIN_AVERAGE_FRAGMENT).max(16),
        }
    }

    pub fn push(&mut self, item: Item) -> Reassembled {
        let (chunk, last) = match item {
            Item::FirstText(chunk) => {
                self.text = true;
                self.buf.clear();
                self.fragments = 0;
                (chunk, false)
            }
            Item::FirstBinary(chunk) => {
                self.text = false;
                self.buf.clear();
                self.fragments = 0;
                (chunk, false)
            }
            Item::Continue(chunk) => (chunk, false),
            Item::Last(chunk) => (chunk, true),
        };
        self.fragments += 1;
        if self.fragments > self.max_fragments {
            self.buf.clear();
            return Reassembled::TooManyFragments;
        }
        if self.buf.len() + chunk.len() > self.max {
            self.buf.clear();
            return Reassembled::TooBig;
        }
        self.buf.extend_from_slice(&chunk);
        if !last {
            return Reassembled::Pending;
        }
        let whole = self.buf.split().freeze();
        if self.text {
            Reassembled::Text(whole)
        } else {
            Reassembled::Binary(whole)
        }
    }
}

/// What the rate limiter says about one client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit: refused with `rate_limited` (told once per second, not per message).
    Limit {
        tell: bool,
    },
    /// Far over the limit for long enough: the connection closes with 1008.
    Close,
}

/// A token bucket (`rate` per second, bursts up to twice that) plus a watch for sustained abuse:
/// more than 5× the rate in each of 3 consecutive seconds.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    window_count: u32,
    abusive_windows: u32,
    told_in_window: bool,
}

/// Seconds of sustained abuse before the connection is closed.
const ABUSE_WINDOWS: u32 = 3;
const ABUSE_FACTOR: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

impl RateLimiter {
    pub fn new(rate_per_sec: u32, now: Instant) -> RateLimiter {
        let rate = f64::from(rate_per_sec.max(1));
        RateLimiter {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            refilled: now,
            window_start: now,
            window_count: 0,
            abusive_windows: 0,
            told_in_window: false,
        }
    }

    pub fn hit(&mut self, now: Instant) -> Verdict {
        if self.window_count == 0 && self.abusive_windows == 0 {
            // Outside a streak, a window starts with its first message.
            self.window_start = now;
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            let abusive = self.window_count > ABUSE_FACTOR * self.rate as u32;
            // A quiet second in between (elapsed ≥ 2 s) breaks the streak.
            self.abusive_windows = if abusive && elapsed < 2 * WINDOW {
                self.abusive_windows + 1
            } else {
                0
            };
            self.window_start = now;
            self.window_count = 0;
            self.told_in_window = false;
        }
        self.window_count += 1;
        if self.abusive_windows >= ABUSE_WINDOWS {
            return Verdict::Close;
        }
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Allow
        } else {
            let tell = !self.told_in_window;
            self.told_in_window = true;
            Verdict::Limit { tell }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_empty_fragments_is_cut_off() {
        let mut r = Reassembly::new(64 * 1024);
        assert_eq!(r.push(Item::FirstText(Bytes::new())), Reassembled::Pending);
        let mut outcome = Reassembled::Pending;
        for _ in 0..100_000 {
            outcome = r.push(Item::Continue(Bytes::new()));
            if outcome != Reassembled::Pending {
                break;
            }
        }
        assert_eq!(outcome, Reassembled::TooManyFragments);
        // A message at the size limit in ordinary fragments is fine.
        let mut r = Reassembly::new(64 * 1024);
        assert_eq!(
            r.push(Item::FirstText(Bytes::from(vec![b'a'; 1300]))),
            Reassembled::Pending
        );
        for _ in 0..48 {
            assert_eq!(
                r.push(Item::Continue(Bytes::from(vec![b'a'; 1300]))),
                Reassembled::Pending
            );
        }
        assert!(matches!(
            r.push(Item::Last(Bytes::from(vec![b'a'; 10]))),
            Reassembled::Text(_)
        ));
    }

    #[test]
    fn fragments_are_joined_within_the_limit() {
        let mut r = Reassembly::new(10);
        assert_eq!(
            r.push(Item::FirstText(Bytes::from_static(b"{\"ty"))),
            Reassembled::Pending
        );
        assert_eq!(
            r.push(Item::Continue(Bytes::from_static(b"pe\""))),
            Reassembled::Pending
        );
        assert_eq!(
            r.push(Item::Last(Bytes::from_static(b":1}"))),
            Reassembled::Text(Bytes::from_static(b"{\"type\":1}"))
        );
        assert_eq!(
            r.push(Item::FirstBinary(Bytes::from_static(b"12345"))),
            Reassembled::Pending
        );
        assert_eq!(r.push(Item::Last(Bytes::from_static(b"678901"))), Reassembled::TooBig);
    }

    #[test]
    fn a_burst_is_allowed_then_limited_and_told_once() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        for _ in 0..20 {
            assert_eq!(limiter.hit(start), Verdict::Allow);
        }
        assert_eq!(limiter.hit(start), Verdict::Limit { tell: true });
        assert_eq!(limiter.hit(start), Verdict::Limit { tell: false });
        // A tenth of a second later one more token has come back.
        assert_eq!(limiter.hit(start + Duration::from_millis(100)), Verdict::Allow);
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_limited() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        for i in 0..300 {
            assert_eq!(limiter.hit(start + Duration::from_millis(100 * i)), Verdict::Allow);
        }
    }

    #[test]
    fn sustained_floods_close_after_three_seconds() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        let mut closed_at = None;
        // 100 messages per second: 10× the rate.
        for i in 0..500u64 {
            if limiter.hit(start + Duration::from_millis(10 * i)) == Verdict::Close {
                closed_at = Some(i);
                break;
            }
        }
        let closed_at = closed_at.expect("closed");
        assert!((300..=310).contains(&closed_at), "closed after {closed_at} messages");
    }

    #[test]
    fn a_pause_breaks_the_streak() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, start);
        let mut t = start;
        for second in 0..6 {
            for _ in 0..100 {
                assert_ne!(limiter.hit(t), Verdict::Close, "second {second}");
                t += Duration::from_millis(10);
            }
            if second % 2 == 1 {
                t += Duration::from_secs(2);
            }
        }
    }
}
