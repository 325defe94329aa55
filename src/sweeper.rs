//! Background housekeeping: expiring bookings whose hold ran out, and forgetting what is no
//! longer needed (events past their retention, idempotency keys after a day, expired refresh
//! tokens).

use std::time::Duration;

use crate::auth::sessions;
use crate::clock::now_ms;
use crate::domain::bookings;
use crate::events::log;
use crate::state::AppState;

/// How often due bookings are looked for: the longest a booking outlives its hold.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// Pruning is cheap but pointless more often than this.
const PRUNE_EVERY_TICKS: u64 = 60;

pub fn spawn(state: AppState) {
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(EXPIRY_INTERVAL);
        for round in 0u64.. {
            tick.tick().await;
            // Keep expiring, one booking per transaction, until none are due, so a backlog clears
            // in one tick.
            let mut expired = 0;
            loop {
                match state.change(bookings::expire_due).await {
                    Ok(n) if n > 0 => expired += n,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "booking expiry failed; retrying next tick");
                        break;
                    }
                }
            }
            if expired > 0 {
                tracing::info!(expired, "bookings expired");
            }
            // Every tick: an indexed delete of a second's worth of rows, so the log never holds
            // much more than its retention.
            let retention_ms = i64::try_from(state.settings.event_retention.saturating_mul(1000)).unwrap_or(i64::MAX);
            let pruned = state
                .read(move |conn| log::prune(conn, now_ms().saturating_sub(retention_ms)))
                .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "event pruning failed; retrying next tick");
            }
            if round % PRUNE_EVERY_TICKS == 0 {
                let access_ttl = state.settings.access_ttl;
                let pruned = state
                    .read(move |conn| {
                        let now = now_ms();
                        Ok(crate::http::prune_idempotency_keys(conn, now)? + sessions::prune(conn, now, access_ttl)?)
                    })
                    .await;
                if let Err(e) = pruned {
                    tracing::warn!(error = %e, "pruning failed; retrying later");
                }
            }
        }
    });
}
