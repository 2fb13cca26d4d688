//! The webhook worker: delivers every logged event (inbound message, status change) to the
//! configured `webhook.url` as a signed JSON POST, in event order, from durable jobs.
//!
//! - Body: `{"event": "message"|"status"|"identity", "id": <event id>, "data": <the SSE object>}`.
//! - Headers: `X-Interopd-Signature: sha256=<hex HMAC-SHA256 of the body, key webhook.secret>`,
//!   `X-Interopd-Event` (the event name) and `X-Interopd-Event-Id` (the event id; receivers
//!   de-duplicate on it, since delivery is at least once: a crash between the receiver's 2xx
//!   and our commit repeats one delivery).
//! - Only a 2xx answer counts. Anything else is retried after [`backoff_ms`]: 1 s, 2 s, 4 s,
//!   ... doubling up to 10 min, until [`WEBHOOK_RETRY_WINDOW_MS`] (25 h) after the job was made;
//!   then the job is dead-lettered: moved to the store's `webhook_dead` table (the newest
//!   [`crate::events::MAX_DEAD_WEBHOOK_JOBS`] are kept), counted in metrics, never tried again.
//! - Jobs are delivered one at a time, oldest first, so a receiver sees events in order. The
//!   live table holds only jobs still to deliver, so the next one is its first row: picking it
//!   costs one B-tree descent, whatever the backlog, and the gauges are the two tables' lengths.
//!
//! The job rows are written by [`crate::events::EventBus`] in the transaction that logs the
//! event, so pending deliveries survive a restart; at most
//! [`crate::events::MAX_PENDING_WEBHOOK_JOBS`] wait. This file does the network I/O; the
//! schedule and the signature are pure functions.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use smol::Timer;

use super::now_ms;
use crate::config::WebhookConfig;
use crate::events::{self, Event, EventBus, WebhookJob};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::store::{Store, StoreError, Txn};

/// Delay before the first retry, in ms; each further retry doubles it.
pub const WEBHOOK_BACKOFF_BASE_MS: u64 = 1_000;
/// Longest delay between two attempts, in ms.
pub const WEBHOOK_BACKOFF_MAX_MS: u64 = 600_000;
/// How long after its creation a job is retried before it is dead-lettered, in ms (25 h).
pub const WEBHOOK_RETRY_WINDOW_MS: u64 = 25 * 3600 * 1000;
/// Time allowed for one delivery (connect, send, status line), in ms.
pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// Largest response head read from the receiver, in bytes.
pub const MAX_WEBHOOK_RESPONSE_HEAD_BYTES: usize = 8 * 1024;
/// Most dead-lettered jobs an older version left in the live table that one store
/// transaction moves to `webhook_dead` (the worker commits and goes on at once).
pub const WEBHOOK_LEGACY_MOVE_BATCH: usize = 256;
/// Delay after a store error before the worker tries again, in ms.
pub const WEBHOOK_STORE_RETRY_MS: u64 = 5_000;

/// The retry schedule; [`WebhookPolicy::default`] gives the named bounds above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_window_ms: u64,
    pub timeout_ms: u64,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            backoff_base_ms: WEBHOOK_BACKOFF_BASE_MS,
            backoff_max_ms: WEBHOOK_BACKOFF_MAX_MS,
            retry_window_ms: WEBHOOK_RETRY_WINDOW_MS,
            timeout_ms: WEBHOOK_TIMEOUT_MS,
        }
    }
}

/// Delay before the next attempt after `failures` failed ones (at least 1).
pub fn backoff_ms(policy: &WebhookPolicy, failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(40);
    policy
        .backoff_base_ms
        .saturating_mul(1u64 << shift)
        .min(policy.backoff_max_ms)
}

/// The `X-Interopd-Signature` value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes keys of any length; this arm is never taken.
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one delivery attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx status.
    Delivered,
    /// Connect error, timeout, malformed answer or a non-2xx status.
    Failed(String),
}

/// POSTs `body` to the receiver once.
pub async fn deliver(
    config: &WebhookConfig,
    event: &str,
    event_id: u64,
    body: &[u8],
    timeout_ms: u64,
) -> Delivery {
    let attempt = async {
        let mut stream = smol::net::TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let host = if config.host.contains(':') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        };
        let signature = signature(&config.secret, body);
        let event_id = event_id.to_string();
        let user_agent = concat!("interopd/", env!("CARGO_PKG_VERSION"));
        let req = crate::http::ClientRequest {
            method: "POST",
            target: &config.target,
            host: &host,
            headers: &[
                ("User-Agent", user_agent),
                ("Content-Type", "application/json"),
                ("X-Interopd-Event", event),
                ("X-Interopd-Event-Id", &event_id),
                ("X-Interopd-Signature", &signature),
            ],
            body,
        };
        // Only the status counts; the receiver's body (chunked or not) is never read.
        let resp = crate::http::request(&mut stream, &req, MAX_WEBHOOK_RESPONSE_HEAD_BYTES)
            .await
            .map_err(|e| match e {
                crate::http::ClientError::Io(e) => format!("exchange: {e}"),
                other => format!("bad response: {other}"),
            })?;
        let code = resp.head.status;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("status {code}"))
        }
    };
    let timed = async {
        Timer::after(Duration::from_millis(timeout_ms)).await;
        Err("timed out".to_string())
    };
    match attempt.or(timed).await {
        Ok(()) => Delivery::Delivered,
        Err(why) => Delivery::Failed(why),
    }
}

/// What the worker found in the job tables.
struct JobPick {
    /// The oldest live job, with its sequence number.
    next: Option<(u64, WebhookJob)>,
    /// Live jobs (waiting for delivery).
    pending: u64,
    /// Dead-lettered jobs kept.
    dead: u64,
    /// Legacy dead rows were moved and more may follow: look again without waiting.
    again: bool,
}

/// The oldest live job, read from the first row of the live table. A row an older version
/// dead-lettered in place (`dead` set, still in the live table) is moved to `webhook_dead`
/// when met, at most [`WEBHOOK_LEGACY_MOVE_BATCH`] per call.
fn next_job(txn: &Txn) -> Result<(Option<(u64, WebhookJob)>, usize), StoreError> {
    let mut moved = 0;
    while moved < WEBHOOK_LEGACY_MOVE_BATCH {
        let Some((seq, bytes)) = txn.first_webhook_job()? else {
            return Ok((None, moved));
        };
        let job = WebhookJob::decode(&bytes)?;
        if !job.dead {
            return Ok((Some((seq, job)), moved));
        }
        events::dead_letter(txn, seq, job)?;
        moved += 1;
    }
    Ok((None, moved))
}

/// Picks the next job and reads the gauges; commits only if legacy rows were moved.
fn pick_job(store: &Store, metrics: &Metrics) -> Result<JobPick, StoreError> {
    let txn = store.begin()?;
    let (next, moved) = next_job(&txn)?;
    let pick = JobPick {
        again: next.is_none() && moved == WEBHOOK_LEGACY_MOVE_BATCH,
        next,
        pending: txn.webhook_job_count()?,
        dead: txn.dead_webhook_job_count()?,
    };
    if moved > 0 {
        log::info!("webhook: moved {moved} dead-lettered jobs to their own table");
        metrics.commit(txn)?;
    }
    Ok(pick)
}

/// The request body for an event, or `None` if what it names is gone.
fn body_for(store: &Store, event_seq: u64) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    let txn = store.begin()?;
    let Some(bytes) = txn.event(event_seq)? else {
        return Ok(None);
    };
    let event = Event::decode(&bytes)?;
    let Some(data) = super::inbox::event_json(&txn, &event)? else {
        return Ok(None);
    };
    let body = serde_json::json!({"event": event.name(), "id": event_seq, "data": data});
    Ok(Some((
        event.name().to_string(),
        body.to_string().into_bytes(),
    )))
}

/// Runs the worker forever (stop it by dropping the future).
pub async fn run(
    store: Rc<Store>,
    bus: Rc<EventBus>,
    metrics: Rc<Metrics>,
    config: WebhookConfig,
    policy: WebhookPolicy,
) {
    loop {
        let listener = bus.listen();
        let JobPick {
            next: job,
            pending,
            dead,
            again,
        } = match pick_job(&store, &metrics) {
            Ok(found) => found,
            Err(e) => {
                log::error!("webhook: {e}");
                Timer::after(Duration::from_millis(WEBHOOK_STORE_RETRY_MS)).await;
                continue;
            }
        };
        metrics.set(Gauge::WebhookPending, pending);
        metrics.set(Gauge::WebhookDeadLetters, dead);
        let Some((seq, mut job)) = job else {
            if !again {
                listener.await;
            }
            continue;
        };
        let now = now_ms();
        if job.next_attempt_ms > now {
            Timer::after(Duration::from_millis(job.next_attempt_ms - now)).await;
            continue;
        }
        let outcome = match body_for(&store, job.event_seq) {
            Ok(Some((name, body))) => {
                deliver(&config, &name, job.event_seq, &body, policy.timeout_ms).await
            }
            Ok(None) => Delivery::Delivered,
            Err(e) => {
                log::error!("webhook: {e}");
                Timer::after(Duration::from_millis(WEBHOOK_STORE_RETRY_MS)).await;
                continue;
            }
        };
        let now = now_ms();
        let delivered = matches!(outcome, Delivery::Delivered);
        let result = store.begin().and_then(|txn| {
            let settled = settle(&txn, seq, &mut job, delivered, &policy, now)?;
            metrics.commit(txn)?;
            Ok(settled)
        });
        let settled = match result {
            Ok(settled) => settled,
            Err(e) => {
                log::error!("webhook: {e}");
                Timer::after(Duration::from_millis(WEBHOOK_STORE_RETRY_MS)).await;
                continue;
            }
        };
        let why = match outcome {
            Delivery::Delivered => {
                metrics.inc(Counter::WebhookDelivered);
                continue;
            }
            Delivery::Failed(why) => why,
        };
        metrics.inc(Counter::WebhookFailure);
        match settled {
            Settled::Delivered => {}
            Settled::Retry => log::warn!(
                "webhook: event {} attempt {} failed ({why}); retry in {} ms",
                job.event_seq,
                job.attempts,
                job.next_attempt_ms.saturating_sub(now)
            ),
            Settled::DeadLettered => {
                metrics.inc(Counter::WebhookDeadLettered);
                log::error!(
                    "webhook: event {} dead-lettered after {} attempts: {why}",
                    job.event_seq,
                    job.attempts
                );
            }
            Settled::GoneMeanwhile => log::warn!(
                "webhook: event {} attempt {} failed ({why}); it was dead-lettered meanwhile",
                job.event_seq,
                job.attempts
            ),
        }
    }
}

/// What [`settle`] wrote for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Delivered: the job is gone (from the dead table too, had the pending bound moved it
    /// there during the attempt).
    Delivered,
    /// Failed: the job waits for its new `next_attempt_ms`.
    Retry,
    /// Failed past the retry window: the job moved to `webhook_dead`.
    DeadLettered,
    /// Failed, and recording events dead-lettered the job during the attempt (the pending
    /// bound): nothing written, the dead row stays as it is.
    GoneMeanwhile,
}

/// Writes the outcome of one attempt at live job `seq` in `txn`. On failure, `job` gets its
/// new attempt count and time.
fn settle(
    txn: &Txn,
    seq: u64,
    job: &mut WebhookJob,
    delivered: bool,
    policy: &WebhookPolicy,
    now_ms: u64,
) -> Result<Settled, StoreError> {
    if delivered {
        if !txn.remove_webhook_job(seq)? {
            txn.remove_dead_webhook_job(seq)?;
        }
        return Ok(Settled::Delivered);
    }
    job.attempts = job.attempts.saturating_add(1);
    job.next_attempt_ms = now_ms.saturating_add(backoff_ms(policy, job.attempts));
    let (live, settled) = if now_ms.saturating_sub(job.created_ms) >= policy.retry_window_ms {
        (events::dead_letter(txn, seq, *job)?, Settled::DeadLettered)
    } else {
        (txn.put_webhook_job(seq, &job.encode())?, Settled::Retry)
    };
    Ok(if live {
        settled
    } else {
        Settled::GoneMeanwhile
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MAX_DEAD_WEBHOOK_JOBS;

    fn job(event_seq: u64, created_ms: u64) -> WebhookJob {
        WebhookJob {
            event_seq,
            attempts: 0,
            created_ms,
            next_attempt_ms: created_ms,
            dead: false,
        }
    }

    #[test]
    fn a_job_failing_past_its_window_moves_to_the_dead_table_and_the_next_live_one_is_picked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let policy = WebhookPolicy::default();
        let txn = store.begin().unwrap();
        let first = txn.push_webhook_job(&job(1, 0).encode()).unwrap();
        let second = txn.push_webhook_job(&job(2, 0).encode()).unwrap();
        let (Some((seq, mut picked)), 0) = next_job(&txn).unwrap() else {
            panic!("the oldest live job is picked");
        };
        assert_eq!((seq, picked.event_seq), (first, 1));

        // Inside the window a failure is a retry, in place.
        let young = policy.retry_window_ms - 1;
        let settled = settle(&txn, seq, &mut picked, false, &policy, young).unwrap();
        assert_eq!(settled, Settled::Retry);
        assert_eq!(next_job(&txn).unwrap().0.map(|(s, _)| s), Some(first));

        // 25 h after its creation it gives up.
        let old = policy.retry_window_ms;
        let settled = settle(&txn, seq, &mut picked, false, &policy, old).unwrap();
        assert_eq!(settled, Settled::DeadLettered);
        assert_eq!(txn.webhook_job_count().unwrap(), 1);
        assert_eq!(txn.dead_webhook_job_count().unwrap(), 1);
        let (dead_seq, row) = txn.dead_webhook_jobs(0, 10).unwrap().remove(0);
        let dead = WebhookJob::decode(&row).unwrap();
        assert_eq!((dead_seq, dead.event_seq, dead.attempts), (first, 1, 2));
        assert!(dead.dead);
        let (next, _) = next_job(&txn).unwrap();
        assert_eq!(next.map(|(s, j)| (s, j.event_seq)), Some((second, 2)));
    }

    #[test]
    fn dead_rows_left_in_the_live_table_by_older_versions_are_moved_when_met() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let txn = store.begin().unwrap();
        let legacy = WebhookJob {
            attempts: 30,
            dead: true,
            ..job(1, 0)
        };
        let legacy_seq = txn.push_webhook_job(&legacy.encode()).unwrap();
        let live_seq = txn.push_webhook_job(&job(2, 5).encode()).unwrap();
        txn.commit().unwrap();

        let pick = pick_job(&store, &Metrics::default()).unwrap();
        assert_eq!(pick.next.map(|(s, _)| s), Some(live_seq));
        assert_eq!((pick.pending, pick.dead, pick.again), (1, 1, false));
        // The move was committed, with the row unchanged under its old key.
        let txn = store.begin().unwrap();
        let dead = txn.dead_webhook_jobs(0, 10).unwrap();
        assert_eq!(dead, vec![(legacy_seq, legacy.encode())]);
    }

    #[test]
    fn many_legacy_dead_rows_are_moved_in_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let txn = store.begin().unwrap();
        let legacy = WebhookJob {
            dead: true,
            ..job(1, 0)
        };
        for _ in 0..WEBHOOK_LEGACY_MOVE_BATCH + 1 {
            txn.push_webhook_job(&legacy.encode()).unwrap();
        }
        txn.commit().unwrap();
        let metrics = Metrics::default();
        let pick = pick_job(&store, &metrics).unwrap();
        assert!(pick.next.is_none() && pick.again);
        let pick = pick_job(&store, &metrics).unwrap();
        assert!(pick.next.is_none() && !pick.again);
        assert_eq!((pick.pending, pick.dead), (0, 257));
    }

    #[test]
    fn the_dead_table_keeps_the_newest_jobs_up_to_its_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let txn = store.begin().unwrap();
        for n in 1..=MAX_DEAD_WEBHOOK_JOBS + 2 {
            let seq = txn.push_webhook_job(&job(n, 0).encode()).unwrap();
            assert!(events::dead_letter(&txn, seq, job(n, 0)).unwrap());
        }
        assert_eq!(txn.dead_webhook_job_count().unwrap(), MAX_DEAD_WEBHOOK_JOBS);
        assert_eq!(txn.webhook_job_count().unwrap(), 0);
        let oldest = txn.dead_webhook_jobs(0, 1).unwrap();
        assert_eq!(oldest[0].0, 3, "the two oldest dead jobs were dropped");
        // A job that is not live any more is not dead-lettered twice.
        assert!(!events::dead_letter(&txn, 3, job(3, 0)).unwrap());
    }

    #[test]
    fn a_job_delivered_after_the_backlog_bound_dead_lettered_it_leaves_no_dead_row() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let policy = WebhookPolicy::default();
        let txn = store.begin().unwrap();
        let seq = txn.push_webhook_job(&job(1, 0).encode()).unwrap();
        let (Some((_, mut picked)), _) = next_job(&txn).unwrap() else {
            panic!("a live job");
        };
        // While the attempt runs, the pending bound dead-letters it.
        assert!(events::dead_letter(&txn, seq, picked).unwrap());
        let failed = settle(&txn, seq, &mut picked, false, &policy, 1).unwrap();
        assert_eq!(failed, Settled::GoneMeanwhile);
        assert_eq!(txn.webhook_job_count().unwrap(), 0, "not written back");
        let delivered = settle(&txn, seq, &mut picked, true, &policy, 2).unwrap();
        assert_eq!(delivered, Settled::Delivered);
        assert_eq!(txn.dead_webhook_job_count().unwrap(), 0);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap() {
        let p = WebhookPolicy::default();
        let delays: Vec<u64> = (1..=4).map(|n| backoff_ms(&p, n)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(backoff_ms(&p, 30), WEBHOOK_BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(&p, u32::MAX), WEBHOOK_BACKOFF_MAX_MS);
    }

    #[test]
    fn retries_cover_at_least_a_day() {
        let p = WebhookPolicy::default();
        assert!(p.retry_window_ms >= 24 * 3600 * 1000);
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
