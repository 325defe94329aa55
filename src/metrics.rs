//! Prometheus metrics (`GET /metrics`), one registry per server. The hub's actors, the sessions
//! and the request log count into it; the `system` channel reads the same numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Events routed to the hub.
    pub events_published: IntCounter,
    /// Events the hub read from the log because no report of them arrived in time.
    pub events_from_log: IntCounter,
    /// Events not sent to other nodes because the backplane was down (they read them from the log).
    pub backplane_dropped: IntCounter,
    /// Messages queued to sessions (one per event per recipient).
    pub deliveries: IntCounter,
    /// Open WebSocket connections, by endpoint (`stations`, `station`, `notifications`, `ws`).
    pub ws_connections: IntGaugeVec,
    /// Sessions joined to a user's notifier.
    pub notification_subscriptions: IntGauge,
    /// Station and system subscriptions, as of the last scrape.
    pub subscriptions: IntGauge,
    /// Connections closed with 1013 because they did not read.
    pub slow_consumer_closes: IntCounter,
    /// Client messages refused by the rate limit.
    pub rate_limited: IntCounter,
    /// Channels caught up by replaying the event log (`last_event_id`).
    pub resume_replays: IntCounter,
    pub snapshot_reads: IntCounter,
    /// One station's feed opened with the station read from the database, not as kept.
    pub station_snapshot_reads: IntCounter,
    /// Transactions of the group commit, and the changes they held: their ratio is the batch size.
    pub write_batches: IntCounter,
    pub batched_changes: IntCounter,
    /// Seconds from an event's commit to its hand-over to every recipient's queue.
    pub deliver_latency: Histogram,
    /// HTTP requests by route pattern and status.
    pub http_requests: IntCounterVec,
    pub db_pool_connections: IntGauge,
    pub db_pool_idle: IntGauge,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed and unique here, so registration cannot fail but by a bug in this file.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help).expect("valid name"));
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help).expect("valid name"));
        Metrics {
            events_published: counter("swapcast_events_published_total", "Events routed to the hub"),
            events_from_log: counter(
                "swapcast_events_from_log_total",
                "Events read from the log because no report of them arrived in time",
            ),
            backplane_dropped: counter(
                "swapcast_backplane_dropped_total",
                "Events not sent to other nodes while the backplane was down",
            ),
            deliveries: counter(
                "swapcast_messages_delivered_total",
                "Messages queued to WebSocket sessions",
            ),
            ws_connections: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new("swapcast_ws_connections", "Open WebSocket connections"),
                    &["endpoint"],
                )
                .expect("valid name"),
            ),
            notification_subscriptions: gauge("swapcast_notification_subscriptions", "Sessions joined to a notifier"),
            subscriptions: gauge("swapcast_subscriptions", "Station and system subscriptions"),
            slow_consumer_closes: counter("swapcast_slow_consumer_closes_total", "Connections closed with 1013"),
            rate_limited: counter(
                "swapcast_rate_limited_total",
                "Client messages refused by the rate limit",
            ),
            resume_replays: counter("swapcast_resume_replays_total", "Channels caught up from the event log"),
            snapshot_reads: counter(
                "swapcast_snapshot_reads_total",
                "All-stations snapshots read from the database (one serves every connection at its position)",
            ),
            station_snapshot_reads: counter(
                "swapcast_station_snapshot_reads_total",
                "Station feeds opened with the station read from the database (the others open with it as kept)",
            ),
            write_batches: counter(
                "swapcast_write_batches_total",
                "Transactions of the group commit (each one commit for a batch of changes)",
            ),
            batched_changes: counter(
                "swapcast_batched_changes_total",
                "Changes run by the group commit, committed or refused",
            ),
            deliver_latency: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "swapcast_publish_to_deliver_seconds",
                        "From commit to every recipient's queue",
                    )
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                )
                .expect("valid name"),
            ),
            http_requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("swapcast_http_requests_total", "HTTP requests"),
                    &["route", "status"],
                )
                .expect("valid name"),
            ),
            db_pool_connections: gauge("swapcast_db_pool_connections", "Database connections open"),
            db_pool_idle: gauge("swapcast_db_pool_idle_connections", "Database connections idle"),
            registry,
        }
    }

    pub fn count_event(&self) {
        self.events_published.inc();
    }

    pub fn count_delivery(&self) {
        self.deliveries.inc();
    }

    pub fn notification_joined(&self, delta: i64) {
        self.notification_subscriptions.add(delta);
    }

    /// Events, deliveries and notification subscriptions so far (for `system_metrics`).
    pub fn snapshot(&self) -> (u64, u64, i64) {
        (
            self.events_published.get(),
            self.deliveries.get(),
            self.notification_subscriptions.get().max(0),
        )
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.count_event();
        metrics.http_requests.with_label_values(&["/api/stations", "201"]).inc();
        let text = metrics.render();
        assert!(text.contains("swapcast_events_published_total 1"), "{text}");
        assert!(
            text.contains(r#"swapcast_http_requests_total{route="/api/stations",status="201"} 1"#),
            "{text}"
        );
        assert_eq!(metrics.snapshot(), (1, 0, 0));
    }
}
