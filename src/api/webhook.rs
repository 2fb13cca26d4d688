//! The webhook worker: delivers every logged event (inbound message, status change) to the
//! configured `webhook.url` as a signed JSON POST, in event order, from durable jobs.
//!
//! - Body: `{"event": "message"|"status", "id": <event id>, "data": <the SSE object>}`.
//! - Headers: `X-Interopd-Signature: sha256=<hex HMAC-SHA256 of the body, key webhook.secret>`,
//!   `X-Interopd-Event` (the event name) and `X-Interopd-Event-Id` (the event id; receivers
//!   de-duplicate on it, since delivery is at least once: a crash between the receiver's 2xx
//!   and our commit repeats one delivery).
//! - Only a 2xx answer counts. Anything else is retried after [`backoff_ms`]: 1 s, 2 s, 4 s,
//!   ... doubling up to 10 min, until [`WEBHOOK_RETRY_WINDOW_MS`] (25 h) after the job was made;
//!   then the job is dead-lettered: kept in the store, counted in metrics, never tried again.
//! - Jobs are delivered one at a time, oldest first, so a receiver sees events in order.
//!
//! The job rows are written by [`crate::events::EventBus`] in the transaction that logs the
//! event, so pending deliveries survive a restart. This file does the network I/O; the
//! schedule and the signature are pure functions.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use smol::Timer;

use super::now_ms;
use crate::config::WebhookConfig;
use crate::events::{Event, EventBus, WebhookJob};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::store::{Store, StoreError};

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
/// Jobs read per scan for the oldest live one.
pub const WEBHOOK_SCAN_JOBS: usize = 256;
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
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: interopd/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Interopd-Event: {event}\r\nX-Interopd-Event-Id: {event_id}\r\nX-Interopd-Signature: {}\r\nConnection: close\r\n\r\n",
            config.target,
            env!("CARGO_PKG_VERSION"),
            body.len(),
            signature(&config.secret, body),
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream
            .write_all(body)
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before a status line".to_string());
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(_) if resp.code.is_some() => {
                    let code = resp.code.unwrap_or(0);
                    return if (200..300).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("status {code}"))
                    };
                }
                Ok(_) if buf.len() < MAX_WEBHOOK_RESPONSE_HEAD_BYTES => {}
                Ok(_) => return Err("response head too large".to_string()),
                Err(e) => return Err(format!("bad response: {e}")),
            }
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

/// What a scan of the job table found.
struct JobScan {
    /// The oldest job not dead-lettered, with its sequence number.
    oldest_live: Option<(u64, WebhookJob)>,
    pending: u64,
    dead: u64,
}

/// The oldest live job, and the number of pending and dead jobs.
fn scan_jobs(store: &Store) -> Result<JobScan, StoreError> {
    let txn = store.begin()?;
    let mut after = 0;
    let mut first = None;
    let mut pending = 0;
    let mut dead = 0;
    loop {
        let batch = txn.webhook_jobs(after, WEBHOOK_SCAN_JOBS)?;
        let Some((last, _)) = batch.last() else {
            break;
        };
        after = *last;
        for (seq, bytes) in batch {
            let job = WebhookJob::decode(&bytes)?;
            if job.dead {
                dead += 1;
            } else {
                pending += 1;
                if first.is_none() {
                    first = Some((seq, job));
                }
            }
        }
    }
    Ok(JobScan {
        oldest_live: first,
        pending,
        dead,
    })
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
        let JobScan {
            oldest_live: job,
            pending,
            dead,
        } = match scan_jobs(&store) {
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
            listener.await;
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
        let result = store.begin().and_then(|txn| {
            match &outcome {
                Delivery::Delivered => {
                    txn.remove_webhook_job(seq)?;
                }
                Delivery::Failed(_) => {
                    job.attempts = job.attempts.saturating_add(1);
                    job.next_attempt_ms = now + backoff_ms(&policy, job.attempts);
                    job.dead = now.saturating_sub(job.created_ms) >= policy.retry_window_ms;
                    txn.put_webhook_job(seq, &job.encode())?;
                }
            }
            metrics.commit(txn)
        });
        if let Err(e) = result {
            log::error!("webhook: {e}");
            Timer::after(Duration::from_millis(WEBHOOK_STORE_RETRY_MS)).await;
            continue;
        }
        match outcome {
            Delivery::Delivered => metrics.inc(Counter::WebhookDelivered),
            Delivery::Failed(why) => {
                metrics.inc(Counter::WebhookFailure);
                if job.dead {
                    metrics.inc(Counter::WebhookDeadLettered);
                    log::error!(
                        "webhook: event {} dead-lettered after {} attempts: {why}",
                        job.event_seq,
                        job.attempts
                    );
                } else {
                    log::warn!(
                        "webhook: event {} attempt {} failed ({why}); retry in {} ms",
                        job.event_seq,
                        job.attempts,
                        job.next_attempt_ms.saturating_sub(now)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
