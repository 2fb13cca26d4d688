//! The daemon's counters and gauges, rendered as Prometheus text (exposition format 0.0.4) for
//! `GET /metrics`. Everything lives in `Cell`s behind one `Rc<Metrics>` shared on the daemon's
//! single thread: the API, the webhook worker and the link update it with [`Metrics::inc`],
//! [`Metrics::set`] and [`Metrics::observe_commit`]. Values are process-lifetime (they start at
//! zero after a restart, as Prometheus counters may), except the gauges the daemon recomputes
//! from the store on start.
//!
//! This file owns the metric names and their rendering. It does no I/O; [`Metrics::commit`]
//! reads the monotonic clock to time a store commit.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::store::{OutboxStatus, StoreError, Txn};

/// Upper bounds of the store commit latency histogram buckets, in seconds.
pub const COMMIT_BUCKETS_SECS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Most distinct HTTP status codes counted separately; further ones count as status 0.
pub const MAX_HTTP_STATUS_SERIES: usize = 32;

/// A counter the daemon increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// An inbound message was committed to the inbox.
    MessageIn,
    /// An outbound message reached this status (queued on accept, then sent, delivered, ...).
    MessageOut(OutboxStatus),
    /// The link connected again after losing the connection.
    LinkReconnect,
    /// A webhook delivery got a 2xx answer.
    WebhookDelivered,
    /// A webhook delivery attempt failed (connect error, timeout or non-2xx).
    WebhookFailure,
    /// A webhook job was dead-lettered: its retry window ran out, or the backlog reached
    /// `events::MAX_PENDING_WEBHOOK_JOBS` and it was the oldest.
    WebhookDeadLettered,
    /// An identity change was recorded for a contact device.
    IdentityChanged,
    /// A trigger URL sent its message (the send was accepted).
    TriggerFired,
    /// A trigger request was refused for its key: wrong, missing, or for an unknown trigger.
    TriggerRefusedKey,
    /// A trigger request with the right key was refused by the trigger's rate limit.
    TriggerRateLimited,
}

/// A gauge the daemon sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// 1 while the link is logged in, else 0.
    LinkUp,
    /// 1 while the link waits after another client took over our device, else 0.
    LinkReplaced,
    /// Outbound messages waiting to be sent (status `queued`).
    OutboxQueued,
    /// Webhook jobs waiting for delivery (the `webhook_jobs` table's length).
    WebhookPending,
    /// Webhook jobs that gave up, kept for inspection (the `webhook_dead` table's length).
    WebhookDeadLetters,
    /// Open SSE streams.
    SseClients,
    /// 1 while the store works, 0 while it is failed (docs/store.md, "A full disk").
    StoreUp,
    /// Times the store failed since start (rendered as a counter).
    StoreFailures,
    /// Times a failed store was reopened since start (rendered as a counter).
    StoreReopens,
    /// When the last scheduled backup succeeded, seconds since the epoch (0: none).
    BackupLastSuccessSecs,
    /// Bytes of the newest scheduled backup (0: none).
    BackupLastBytes,
    /// Scheduled backups that failed since start (rendered as a counter).
    BackupFailures,
}

const OUT_STATUSES: [OutboxStatus; 5] = [
    OutboxStatus::Queued,
    OutboxStatus::Sent,
    OutboxStatus::Delivered,
    OutboxStatus::Read,
    OutboxStatus::Failed,
];

/// The daemon's metrics. Create one with [`Metrics::default`] and share it as `Rc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    messages_in: Cell<u64>,
    messages_out: [Cell<u64>; 5],
    link_reconnects: Cell<u64>,
    webhook_delivered: Cell<u64>,
    webhook_failures: Cell<u64>,
    webhook_dead_lettered: Cell<u64>,
    identity_changes: Cell<u64>,
    link_up: Cell<u64>,
    link_replaced: Cell<u64>,
    outbox_queued: Cell<u64>,
    webhook_pending: Cell<u64>,
    webhook_dead_letters: Cell<u64>,
    sse_clients: Cell<u64>,
    store_up: Cell<u64>,
    store_failures: Cell<u64>,
    store_reopens: Cell<u64>,
    trigger_fired: Cell<u64>,
    trigger_refused_key: Cell<u64>,
    trigger_rate_limited: Cell<u64>,
    backup_last_success_secs: Cell<u64>,
    backup_last_bytes: Cell<u64>,
    backup_failures: Cell<u64>,
    http_responses: RefCell<BTreeMap<u16, u64>>,
    commit_buckets: [Cell<u64>; COMMIT_BUCKETS_SECS.len()],
    commit_count: Cell<u64>,
    commit_sum_secs: Cell<f64>,
    /// The local API listener's refusal counters, once it listens.
    api_listener: std::cell::OnceCell<std::sync::Arc<crate::http::ListenerStats>>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get().saturating_add(by));
}

fn status_index(s: OutboxStatus) -> usize {
    match s {
        OutboxStatus::Queued => 0,
        OutboxStatus::Sent => 1,
        OutboxStatus::Delivered => 2,
        OutboxStatus::Read => 3,
        OutboxStatus::Failed => 4,
    }
}

impl Metrics {
    /// Reports the local API listener's counters from now on (once; later calls are ignored).
    pub fn watch_api_listener(&self, stats: std::sync::Arc<crate::http::ListenerStats>) {
        let _ = self.api_listener.set(stats);
    }

    /// Adds one to `counter`.
    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds `by` to `counter`.
    pub fn add(&self, counter: Counter, by: u64) {
        let cell = match counter {
            Counter::MessageIn => &self.messages_in,
            Counter::MessageOut(s) => match self.messages_out.get(status_index(s)) {
                Some(c) => c,
                None => return,
            },
            Counter::LinkReconnect => &self.link_reconnects,
            Counter::WebhookDelivered => &self.webhook_delivered,
            Counter::WebhookFailure => &self.webhook_failures,
            Counter::WebhookDeadLettered => &self.webhook_dead_lettered,
            Counter::IdentityChanged => &self.identity_changes,
            Counter::TriggerFired => &self.trigger_fired,
            Counter::TriggerRefusedKey => &self.trigger_refused_key,
            Counter::TriggerRateLimited => &self.trigger_rate_limited,
        };
        bump(cell, by);
    }

    /// The current value of `counter`.
    pub fn counter(&self, counter: Counter) -> u64 {
        match counter {
            Counter::MessageIn => self.messages_in.get(),
            Counter::MessageOut(s) => self.messages_out.get(status_index(s)).map_or(0, Cell::get),
            Counter::LinkReconnect => self.link_reconnects.get(),
            Counter::WebhookDelivered => self.webhook_delivered.get(),
            Counter::WebhookFailure => self.webhook_failures.get(),
            Counter::WebhookDeadLettered => self.webhook_dead_lettered.get(),
            Counter::IdentityChanged => self.identity_changes.get(),
            Counter::TriggerFired => self.trigger_fired.get(),
            Counter::TriggerRefusedKey => self.trigger_refused_key.get(),
            Counter::TriggerRateLimited => self.trigger_rate_limited.get(),
        }
    }

    /// Sets `gauge` to `value`.
    pub fn set(&self, gauge: Gauge, value: u64) {
        self.gauge_cell(gauge).set(value);
    }

    /// The current value of `gauge`.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauge_cell(gauge).get()
    }

    fn gauge_cell(&self, gauge: Gauge) -> &Cell<u64> {
        match gauge {
            Gauge::LinkUp => &self.link_up,
            Gauge::LinkReplaced => &self.link_replaced,
            Gauge::OutboxQueued => &self.outbox_queued,
            Gauge::WebhookPending => &self.webhook_pending,
            Gauge::WebhookDeadLetters => &self.webhook_dead_letters,
            Gauge::SseClients => &self.sse_clients,
            Gauge::StoreUp => &self.store_up,
            Gauge::StoreFailures => &self.store_failures,
            Gauge::StoreReopens => &self.store_reopens,
            Gauge::BackupLastSuccessSecs => &self.backup_last_success_secs,
            Gauge::BackupLastBytes => &self.backup_last_bytes,
            Gauge::BackupFailures => &self.backup_failures,
        }
    }

    /// Raises the link reconnect counter to `total` if it is behind (the link may keep its own
    /// count; this never lowers the counter).
    pub fn set_link_reconnects(&self, total: u64) {
        if total > self.link_reconnects.get() {
            self.link_reconnects.set(total);
        }
    }

    /// Counts one HTTP response by status.
    pub fn http_response(&self, status: u16) {
        let mut map = self.http_responses.borrow_mut();
        let key = if map.contains_key(&status) || map.len() < MAX_HTTP_STATUS_SERIES {
            status
        } else {
            0
        };
        let slot = map.entry(key).or_insert(0);
        *slot = slot.saturating_add(1);
    }

    /// Records one store commit that took `elapsed`.
    pub fn observe_commit(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, cell) in COMMIT_BUCKETS_SECS.iter().zip(&self.commit_buckets) {
            if secs <= *bound {
                bump(cell, 1);
            }
        }
        bump(&self.commit_count, 1);
        self.commit_sum_secs.set(self.commit_sum_secs.get() + secs);
    }

    /// Commits `txn` and records how long the commit took.
    pub fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        let start = Instant::now();
        let result = txn.commit();
        self.observe_commit(start.elapsed());
        result
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "interopd_messages_total",
            "counter",
            "Messages by direction and status (outbound: transitions into each status).",
        );
        sample(
            &mut out,
            "interopd_messages_total",
            &[("direction", "in"), ("status", "received")],
            self.messages_in.get(),
        );
        for (status, cell) in OUT_STATUSES.iter().zip(&self.messages_out) {
            sample(
                &mut out,
                "interopd_messages_total",
                &[("direction", "out"), ("status", status.as_str())],
                cell.get(),
            );
        }
        let simple: [(&str, &str, &str, u64); 12] = [
            (
                "interopd_link_up",
                "gauge",
                "1 while the link to the gatekeeper is logged in.",
                self.link_up.get(),
            ),
            (
                "interopd_link_replaced",
                "gauge",
                "1 while the link waits because another client logged in as our device.",
                self.link_replaced.get(),
            ),
            (
                "interopd_link_reconnects_total",
                "counter",
                "Times the link connected again after losing its connection.",
                self.link_reconnects.get(),
            ),
            (
                "interopd_outbox_queued",
                "gauge",
                "Outbound messages waiting to be sent.",
                self.outbox_queued.get(),
            ),
            (
                "interopd_webhook_pending",
                "gauge",
                "Webhook deliveries waiting (queue depth, at most 100000).",
                self.webhook_pending.get(),
            ),
            (
                "interopd_webhook_dead_letters",
                "gauge",
                "Webhook deliveries that gave up, kept in the store (the newest 1000).",
                self.webhook_dead_letters.get(),
            ),
            (
                "interopd_webhook_deliveries_total",
                "counter",
                "Webhook deliveries answered with 2xx.",
                self.webhook_delivered.get(),
            ),
            (
                "interopd_webhook_failures_total",
                "counter",
                "Webhook delivery attempts that failed (connect error, timeout, non-2xx).",
                self.webhook_failures.get(),
            ),
            (
                "interopd_webhook_dead_lettered_total",
                "counter",
                "Webhook jobs dead-lettered since start (retry window or backlog bound).",
                self.webhook_dead_lettered.get(),
            ),
            (
                "interopd_identity_changes_total",
                "counter",
                "Contact identity changes recorded.",
                self.identity_changes.get(),
            ),
            (
                "interopd_sse_clients",
                "gauge",
                "Open server-sent event streams.",
                self.sse_clients.get(),
            ),
            (
                "interopd_store_commits_total",
                "counter",
                "Store transactions committed through the metrics timer.",
                self.commit_count.get(),
            ),
        ];
        let api = self.api_listener.get().map(|a| &**a);
        let listener = |f: fn(&crate::http::ListenerStats) -> &std::sync::atomic::AtomicU64| {
            api.map_or(0, |a| crate::http::ListenerStats::get(f(a)))
        };
        let listener_counters = [
            (
                "interopd_store_up",
                "gauge",
                "1 while the store reads and writes, 0 while it is failed (a full disk, an I/O error).",
                self.store_up.get(),
            ),
            (
                "interopd_store_failures_total",
                "counter",
                "Times the store failed (a full disk, an I/O error) since start.",
                self.store_failures.get(),
            ),
            (
                "interopd_store_reopens_total",
                "counter",
                "Times a failed store was reopened by itself since start.",
                self.store_reopens.get(),
            ),
            (
                "interopd_api_connections_refused_total",
                "counter",
                "Local API connections refused: every slot they could take was busy.",
                listener(|a| &a.refused),
            ),
            (
                "interopd_api_connections_evicted_total",
                "counter",
                "Idle local API connections closed to make room for a newcomer.",
                listener(|a| &a.evicted),
            ),
            (
                "interopd_api_requests_timed_out_total",
                "counter",
                "Local API requests whose head or body came too slowly.",
                listener(|a| &a.timed_out),
            ),
            (
                "interopd_api_requests_abandoned_total",
                "counter",
                "Local API long-polls and event streams abandoned when the client hung up.",
                listener(|a| &a.hung_up),
            ),
        ];
        let backup = [
            (
                "interopd_backup_last_success_timestamp_seconds",
                "gauge",
                "When the last scheduled backup succeeded, Unix seconds (0: none yet, or [backup] is off).",
                self.backup_last_success_secs.get(),
            ),
            (
                "interopd_backup_last_size_bytes",
                "gauge",
                "Size of the newest scheduled backup archive in bytes (0: none).",
                self.backup_last_bytes.get(),
            ),
            (
                "interopd_backup_failures_total",
                "counter",
                "Scheduled backups that failed since start.",
                self.backup_failures.get(),
            ),
        ];
        for (name, kind, help, value) in simple.into_iter().chain(listener_counters).chain(backup) {
            family(&mut out, name, kind, help);
            sample(&mut out, name, &[], value);
        }
        family(
            &mut out,
            "interopd_trigger_requests_total",
            "counter",
            "Trigger URL requests by result: fired, refused_key (wrong or missing key, unknown trigger), rate_limited.",
        );
        for (result, cell) in [
            ("fired", &self.trigger_fired),
            ("refused_key", &self.trigger_refused_key),
            ("rate_limited", &self.trigger_rate_limited),
        ] {
            sample(
                &mut out,
                "interopd_trigger_requests_total",
                &[("result", result)],
                cell.get(),
            );
        }
        family(
            &mut out,
            "interopd_http_responses_total",
            "counter",
            "Local API responses by status code (0: other codes beyond the series bound).",
        );
        for (status, n) in self.http_responses.borrow().iter() {
            let code = status.to_string();
            sample(
                &mut out,
                "interopd_http_responses_total",
                &[("code", &code)],
                *n,
            );
        }
        family(
            &mut out,
            "interopd_store_commit_seconds",
            "histogram",
            "Store commit latency (fsync included).",
        );
        for (bound, cell) in COMMIT_BUCKETS_SECS.iter().zip(&self.commit_buckets) {
            let le = bound.to_string();
            sample(
                &mut out,
                "interopd_store_commit_seconds_bucket",
                &[("le", &le)],
                cell.get(),
            );
        }
        sample(
            &mut out,
            "interopd_store_commit_seconds_bucket",
            &[("le", "+Inf")],
            self.commit_count.get(),
        );
        let _ = writeln!(
            out,
            "interopd_store_commit_seconds_sum {}",
            self.commit_sum_secs.get()
        );
        sample(
            &mut out,
            "interopd_store_commit_seconds_count",
            &[],
            self.commit_count.get(),
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Label values here are our own ASCII names and numbers: nothing to escape.
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_appear_in_the_rendering() {
        let m = Metrics::default();
        m.inc(Counter::MessageIn);
        m.add(Counter::MessageOut(OutboxStatus::Delivered), 3);
        m.set(Gauge::LinkUp, 1);
        m.http_response(404);
        m.observe_commit(Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains("interopd_messages_total{direction=\"in\",status=\"received\"} 1"));
        assert!(text.contains("interopd_messages_total{direction=\"out\",status=\"delivered\"} 3"));
        assert!(text.contains("interopd_link_up 1"));
        assert!(text.contains("interopd_http_responses_total{code=\"404\"} 1"));
        assert!(text.contains("interopd_store_commit_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("interopd_store_commit_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("interopd_store_commit_seconds_count 1"));
    }

    #[test]
    fn trigger_results_and_backup_state_are_rendered() {
        let m = Metrics::default();
        m.inc(Counter::TriggerFired);
        m.add(Counter::TriggerRefusedKey, 2);
        m.set(Gauge::BackupLastSuccessSecs, 1_796_688_000);
        m.set(Gauge::BackupLastBytes, 4096);
        m.set(Gauge::BackupFailures, 3);
        let text = m.render();
        assert!(text.contains("interopd_trigger_requests_total{result=\"fired\"} 1"));
        assert!(text.contains("interopd_trigger_requests_total{result=\"refused_key\"} 2"));
        assert!(text.contains("interopd_trigger_requests_total{result=\"rate_limited\"} 0"));
        assert!(text.contains("interopd_backup_last_success_timestamp_seconds 1796688000"));
        assert!(text.contains("interopd_backup_last_size_bytes 4096"));
        assert!(text.contains("interopd_backup_failures_total 3"));
        assert!(text.contains("# TYPE interopd_backup_failures_total counter"));
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = Metrics::default().render();
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap_or("").to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(*b)))
                    .unwrap_or(name);
                assert!(declared.contains(base), "{line}");
            }
        }
    }

    #[test]
    fn http_status_series_are_bounded() {
        let m = Metrics::default();
        for s in 100..(100 + MAX_HTTP_STATUS_SERIES as u16 + 10) {
            m.http_response(s);
        }
        assert_eq!(m.http_responses.borrow().len(), MAX_HTTP_STATUS_SERIES + 1);
    }

    #[test]
    fn reconnect_counter_never_goes_down() {
        let m = Metrics::default();
        m.set_link_reconnects(5);
        m.set_link_reconnects(2);
        assert_eq!(m.counter(Counter::LinkReconnect), 5);
    }
}
