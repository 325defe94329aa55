//! Counters the hub keeps about itself, shared by its actors, read by the `system` channel and
//! the stats endpoint.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct HubCounters {
    /// Events routed by the publisher.
    pub events: AtomicU64,
    /// Messages queued to sessions (one per event per recipient).
    pub deliveries: AtomicU64,
    /// Sessions joined to a user's notifier.
    pub notification_subscriptions: AtomicI64,
}

impl HubCounters {
    pub fn count_event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_delivery(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn notification_joined(&self, delta: i64) {
        self.notification_subscriptions.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, i64) {
        (
            self.events.load(Ordering::Relaxed),
            self.deliveries.load(Ordering::Relaxed),
            self.notification_subscriptions.load(Ordering::Relaxed).max(0),
        )
    }
}

/// This node's name: `SWAPCAST_NODE_ID`, or host and process id.
pub fn node_name(configured: Option<&str>) -> String {
    match configured {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
            format!("{}:{}", host.trim(), std::process::id())
        }
    }
}
