//! The daemon's event bus: a durable event log in the store plus an in-process wake-up for
//! the tasks that wait on it (inbox long-poll, SSE streams, the webhook worker).
//!
//! Every event that consumers see (an inbound message, an outbound status change) is first
//! written to the store's `events` table **in the same transaction** as the row change that
//! caused it, and, when webhooks are configured, a webhook job for it too. The event's
//! sequence number is the SSE `id:`: it only grows and a dropped transaction gives it back,
//! so a consumer resuming from `Last-Event-ID` sees every later event exactly once, with no
//! gap and no duplicate. After the commit, the writer calls [`EventBus::publish_message`] or
//! [`EventBus::publish_status`], which wake the waiters; they then read the store. A lost
//! wake-up costs latency, never an event.
//!
//! The protocol for the writer (the link), per change:
//! ```text
//!   txn = store.begin()
//!   cursor = txn.inbox_insert(..)?            | txn.outbox_write(seq, &row)?
//!   bus.record_message(&txn, cursor, now)?    | bus.record_status(&txn, &row)?
//!   txn.commit()?
//!   bus.publish_message(cursor)               | bus.publish_status(&row.id, row.status)
//! ```
//!
//! Webhook jobs are bounded here too: at most [`MAX_PENDING_WEBHOOK_JOBS`] wait for delivery
//! (a new job beyond it dead-letters the oldest), and [`dead_letter`] moves a job that gave
//! up to the `webhook_dead` table, which keeps the newest [`MAX_DEAD_WEBHOOK_JOBS`].
//!
//! This file owns the `events`, `webhook_jobs` and `webhook_dead` row layouts
//! (docs/store.md). It does no I/O of its own beyond the caller's store transaction (and one
//! log line), and reads no clock.

use std::cell::Cell;
use std::rc::Rc;

use crate::metrics::{Counter, Metrics};
use crate::store::{OutboxRow, OutboxStatus, Reader, StoreError, Txn};

/// Row version of an `events` value.
pub const EVENT_ROW_VERSION: u8 = 1;
/// Row version of a `webhook_jobs` value.
pub const WEBHOOK_JOB_ROW_VERSION: u8 = 1;
/// Longest status error code stored in an event, in bytes.
pub const MAX_ERROR_CODE_BYTES: usize = 64;
/// Most webhook jobs waiting for delivery. Recording an event beyond it dead-letters the
/// oldest waiting job first (counted in `Counter::WebhookDeadLettered`), so a receiver that is
/// down for long misses the oldest events, as the event log forgets them
/// (`retention::MAX_EVENT_ROWS`).
pub const MAX_PENDING_WEBHOOK_JOBS: u64 = 100_000;
/// Most dead-lettered webhook jobs kept for inspection; the oldest beyond it are dropped.
pub const MAX_DEAD_WEBHOOK_JOBS: u64 = 1_000;
/// Most waiting jobs one new job dead-letters, so that a table an older version left over
/// [`MAX_PENDING_WEBHOOK_JOBS`] shrinks back to it a little per event.
const MAX_OVERFLOW_PER_JOB: u64 = 2;

const KIND_MESSAGE: u8 = 1;
const KIND_STATUS: u8 = 2;
const KIND_IDENTITY: u8 = 3;
const KIND_TYPING: u8 = 4;
const KIND_GROUP: u8 = 5;
/// Most members one `group` event names; a larger change is logged with the first ones.
pub const MAX_GROUP_EVENT_MEMBERS: usize = 64;
/// Longest `change` of a `group` event, in bytes.
const MAX_GROUP_CHANGE_BYTES: usize = 16;
/// Longest contact user (the account part of its JID) stored in an identity event, in bytes.
pub const MAX_IDENTITY_USER_BYTES: usize = 64;

/// One logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An inbound message was stored at inbox `cursor`.
    Message { cursor: u64 },
    /// Outbound message `id` moved to `status` at `updated_ms`; `error_code` is empty unless
    /// the status is `failed`.
    Status {
        id: String,
        status: OutboxStatus,
        error_code: String,
        updated_ms: u64,
    },
    /// Device `device` of contact `user` changed its identity key from `previous` to
    /// `current` at `at_ms`; `held` when the contact was verified, so `current` waits for
    /// the household's trust. The keys are public identity keys, never secrets.
    Identity {
        user: String,
        device: u32,
        previous: [u8; 32],
        current: [u8; 32],
        held: bool,
        at_ms: u64,
    },
    /// Contact `user` started (`composing`) or stopped typing to us at `at_ms`. Logged for
    /// SSE and webhooks only; never an inbox entry.
    Typing {
        user: String,
        composing: bool,
        at_ms: u64,
    },
    /// Group `group` (its id) changed at `at_ms`: `change` is `create`, `add` or `remove`,
    /// of `members` (user JIDs, at most [`MAX_GROUP_EVENT_MEMBERS`]).
    Group {
        group: String,
        change: String,
        members: Vec<String>,
        at_ms: u64,
    },
}

impl Event {
    /// The SSE `event:` name and the webhook `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Status { .. } => "status",
            Event::Identity { .. } => "identity",
            Event::Typing { .. } => "typing",
            Event::Group { .. } => "group",
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut v = vec![EVENT_ROW_VERSION];
        match self {
            Event::Message { cursor } => {
                v.push(KIND_MESSAGE);
                v.extend_from_slice(&cursor.to_be_bytes());
            }
            Event::Status {
                id,
                status,
                error_code,
                updated_ms,
            } => {
                if error_code.len() > MAX_ERROR_CODE_BYTES {
                    return Err(StoreError::TooLarge {
                        what: "status error code",
                        len: error_code.len() as u64,
                        max: MAX_ERROR_CODE_BYTES as u64,
                    });
                }
                v.push(KIND_STATUS);
                v.push(*status as u8);
                v.extend_from_slice(&updated_ms.to_be_bytes());
                put_str(&mut v, id)?;
                put_str(&mut v, error_code)?;
            }
            Event::Identity {
                user,
                device,
                previous,
                current,
                held,
                at_ms,
            } => {
                if user.len() > MAX_IDENTITY_USER_BYTES {
                    return Err(StoreError::TooLarge {
                        what: "identity event user",
                        len: user.len() as u64,
                        max: MAX_IDENTITY_USER_BYTES as u64,
                    });
                }
                v.push(KIND_IDENTITY);
                v.push(u8::from(*held));
                v.extend_from_slice(&at_ms.to_be_bytes());
                v.extend_from_slice(&device.to_be_bytes());
                v.extend_from_slice(previous);
                v.extend_from_slice(current);
                put_str(&mut v, user)?;
            }
            Event::Typing {
                user,
                composing,
                at_ms,
            } => {
                if user.len() > MAX_IDENTITY_USER_BYTES {
                    return Err(StoreError::TooLarge {
                        what: "typing event user",
                        len: user.len() as u64,
                        max: MAX_IDENTITY_USER_BYTES as u64,
                    });
                }
                v.push(KIND_TYPING);
                v.push(u8::from(*composing));
                v.extend_from_slice(&at_ms.to_be_bytes());
                put_str(&mut v, user)?;
            }
            Event::Group {
                group,
                change,
                members,
                at_ms,
            } => {
                let too_long = |what, len: usize, max: usize| StoreError::TooLarge {
                    what,
                    len: len as u64,
                    max: max as u64,
                };
                if group.len() > crate::group::MAX_GROUP_ID_BYTES {
                    return Err(too_long(
                        "group event id",
                        group.len(),
                        crate::group::MAX_GROUP_ID_BYTES,
                    ));
                }
                if change.len() > MAX_GROUP_CHANGE_BYTES {
                    return Err(too_long(
                        "group event change",
                        change.len(),
                        MAX_GROUP_CHANGE_BYTES,
                    ));
                }
                if members.len() > MAX_GROUP_EVENT_MEMBERS {
                    return Err(too_long(
                        "group event members",
                        members.len(),
                        MAX_GROUP_EVENT_MEMBERS,
                    ));
                }
                v.push(KIND_GROUP);
                v.extend_from_slice(&at_ms.to_be_bytes());
                put_str(&mut v, group)?;
                put_str(&mut v, change)?;
                v.push(members.len() as u8);
                for m in members {
                    if m.len() > crate::store::MAX_GROUP_JID_BYTES {
                        return Err(too_long(
                            "group event member",
                            m.len(),
                            crate::store::MAX_GROUP_JID_BYTES,
                        ));
                    }
                    put_str(&mut v, m)?;
                }
            }
        }
        Ok(v)
    }

    /// Parses stored bytes; refuses unknown versions and kinds, short and long rows.
    pub fn decode(bytes: &[u8]) -> Result<Event, StoreError> {
        let mut r = Reader::new(bytes, "events");
        r.version(EVENT_ROW_VERSION)?;
        let event = match r.u8()? {
            KIND_MESSAGE => Event::Message { cursor: r.u64()? },
            KIND_STATUS => {
                let status = OutboxStatus::from_byte(r.u8()?).ok_or(StoreError::Corrupt {
                    table: "events",
                    detail: "unknown status",
                })?;
                let updated_ms = r.u64()?;
                let id = r.string()?;
                let error_code = r.string()?;
                if error_code.len() > MAX_ERROR_CODE_BYTES {
                    return Err(StoreError::Corrupt {
                        table: "events",
                        detail: "error code too long",
                    });
                }
                Event::Status {
                    id,
                    status,
                    error_code,
                    updated_ms,
                }
            }
            KIND_IDENTITY => {
                let held = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(StoreError::Corrupt {
                            table: "events",
                            detail: "bad held flag",
                        });
                    }
                };
                let at_ms = r.u64()?;
                let device = r.u32()?;
                let previous = r.array::<32>()?;
                let current = r.array::<32>()?;
                let user = r.string()?;
                if user.len() > MAX_IDENTITY_USER_BYTES {
                    return Err(StoreError::Corrupt {
                        table: "events",
                        detail: "identity event user too long",
                    });
                }
                Event::Identity {
                    user,
                    device,
                    previous,
                    current,
                    held,
                    at_ms,
                }
            }
            KIND_TYPING => {
                let composing = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(StoreError::Corrupt {
                            table: "events",
                            detail: "bad typing flag",
                        });
                    }
                };
                let at_ms = r.u64()?;
                let user = r.string()?;
                if user.len() > MAX_IDENTITY_USER_BYTES {
                    return Err(StoreError::Corrupt {
                        table: "events",
                        detail: "typing event user too long",
                    });
                }
                Event::Typing {
                    user,
                    composing,
                    at_ms,
                }
            }
            KIND_GROUP => {
                let corrupt = |detail| StoreError::Corrupt {
                    table: "events",
                    detail,
                };
                let at_ms = r.u64()?;
                let group = r.string()?;
                let change = r.string()?;
                if group.len() > crate::group::MAX_GROUP_ID_BYTES
                    || change.len() > MAX_GROUP_CHANGE_BYTES
                {
                    return Err(corrupt("group event too long"));
                }
                let n = usize::from(r.u8()?);
                if n > MAX_GROUP_EVENT_MEMBERS {
                    return Err(corrupt("group event members"));
                }
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    let m = r.string()?;
                    if m.len() > crate::store::MAX_GROUP_JID_BYTES {
                        return Err(corrupt("group event member too long"));
                    }
                    members.push(m);
                }
                Event::Group {
                    group,
                    change,
                    members,
                    at_ms,
                }
            }
            _ => {
                return Err(StoreError::Corrupt {
                    table: "events",
                    detail: "unknown event kind",
                });
            }
        };
        r.end()?;
        Ok(event)
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    let len = u32::try_from(s.len()).map_err(|_| StoreError::TooLarge {
        what: "event field",
        len: s.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    Ok(())
}

/// One webhook delivery job: deliver event `event_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookJob {
    /// The event to deliver.
    pub event_seq: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the job was created, ms since the epoch (the retry window counts from here).
    pub created_ms: u64,
    /// Earliest time of the next attempt, ms since the epoch.
    pub next_attempt_ms: u64,
    /// The job gave up: kept for inspection, never attempted again.
    pub dead: bool,
}

impl WebhookJob {
    /// The stored bytes: version, event seq, attempts, created, next attempt, dead flag.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(30);
        v.push(WEBHOOK_JOB_ROW_VERSION);
        v.extend_from_slice(&self.event_seq.to_be_bytes());
        v.extend_from_slice(&self.attempts.to_be_bytes());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(&self.next_attempt_ms.to_be_bytes());
        v.push(u8::from(self.dead));
        v
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<WebhookJob, StoreError> {
        let mut r = Reader::new(bytes, "webhook_jobs");
        r.version(WEBHOOK_JOB_ROW_VERSION)?;
        let job = WebhookJob {
            event_seq: r.u64()?,
            attempts: r.u32()?,
            created_ms: r.u64()?,
            next_attempt_ms: r.u64()?,
            dead: match r.u8()? {
                0 => false,
                1 => true,
                _ => {
                    return Err(StoreError::Corrupt {
                        table: "webhook_jobs",
                        detail: "bad dead flag",
                    });
                }
            },
        };
        r.end()?;
        Ok(job)
    }
}

/// Moves live webhook job `seq` to `webhook_dead`, marked dead, in `txn`, and drops the
/// oldest dead jobs beyond [`MAX_DEAD_WEBHOOK_JOBS`]. False (nothing written) if the job was
/// no longer live: delivered, or dead-lettered already.
pub fn dead_letter(txn: &Txn, seq: u64, job: WebhookJob) -> Result<bool, StoreError> {
    let dead = WebhookJob { dead: true, ..job };
    txn.dead_letter_webhook_job(seq, &dead.encode(), MAX_DEAD_WEBHOOK_JOBS)
}

/// The bus. One per daemon, shared as `Rc<EventBus>` on the daemon's thread.
#[derive(Debug)]
pub struct EventBus {
    wake: event_listener::Event,
    webhooks: bool,
    metrics: Rc<Metrics>,
    /// Bumped on every publish, so a waiter can tell that something happened.
    generation: Cell<u64>,
    /// Whether the "webhook backlog full" warning was logged (once per process).
    warned_backlog: Cell<bool>,
}

impl EventBus {
    /// A bus; `webhooks` says whether a webhook URL is configured (jobs are written only then).
    pub fn new(webhooks: bool, metrics: Rc<Metrics>) -> Rc<EventBus> {
        Rc::new(EventBus {
            wake: event_listener::Event::new(),
            webhooks,
            metrics,
            generation: Cell::new(0),
            warned_backlog: Cell::new(false),
        })
    }

    /// Whether webhook jobs are written.
    pub fn webhooks_enabled(&self) -> bool {
        self.webhooks
    }

    /// Logs "an inbound message was stored at `cursor`" in `txn` (and its webhook job).
    /// Call it in the transaction that inserted the inbox row. Returns the event's sequence.
    pub fn record_message(&self, txn: &Txn, cursor: u64, now_ms: u64) -> Result<u64, StoreError> {
        self.record(txn, &Event::Message { cursor }, now_ms)
    }

    /// Logs "outbound message `row.id` is now `row.status`" in `txn` (and its webhook job).
    /// Call it in the transaction that wrote the changed outbox row. Uses `row.updated_ms` as
    /// the event's time. Returns the event's sequence.
    pub fn record_status(&self, txn: &Txn, row: &OutboxRow) -> Result<u64, StoreError> {
        let event = Event::Status {
            id: row.id.clone(),
            status: row.status,
            error_code: row.error_code.clone(),
            updated_ms: row.updated_ms,
        };
        self.record(txn, &event, row.updated_ms)
    }

    /// Logs "a contact device's identity changed" in `txn` (and its webhook job). Call it in
    /// the transaction that stored the change. Returns the event's sequence.
    pub fn record_identity(
        &self,
        txn: &Txn,
        change: &crate::client::IdentityChange,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let event = Event::Identity {
            user: change.device.user.clone(),
            device: change.device.device.unwrap_or(0),
            previous: change.previous,
            current: change.current,
            held: change.held,
            at_ms: now_ms,
        };
        self.record(txn, &event, now_ms)
    }

    /// Logs "contact `user` is typing (or stopped)" in `txn` (and its webhook job).
    pub fn record_typing(
        &self,
        txn: &Txn,
        user: &str,
        composing: bool,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let event = Event::Typing {
            user: user.to_owned(),
            composing,
            at_ms: now_ms,
        };
        self.record(txn, &event, now_ms)
    }

    /// Logs "group `group` changed" in `txn` (and its webhook job); members beyond
    /// [`MAX_GROUP_EVENT_MEMBERS`] are left out of the event.
    pub fn record_group(
        &self,
        txn: &Txn,
        group: &str,
        change: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let event = Event::Group {
            group: group.to_owned(),
            change: change.to_owned(),
            members: members
                .iter()
                .take(MAX_GROUP_EVENT_MEMBERS)
                .cloned()
                .collect(),
            at_ms: now_ms,
        };
        self.record(txn, &event, now_ms)
    }

    fn record(&self, txn: &Txn, event: &Event, now_ms: u64) -> Result<u64, StoreError> {
        let seq = txn.append_event(&event.encode()?)?;
        if self.webhooks {
            self.make_room_for_webhook_job(txn)?;
            let job = WebhookJob {
                event_seq: seq,
                attempts: 0,
                created_ms: now_ms,
                next_attempt_ms: now_ms,
                dead: false,
            };
            txn.push_webhook_job(&job.encode())?;
        }
        Ok(seq)
    }

    /// Dead-letters the oldest waiting webhook jobs while one more would exceed
    /// [`MAX_PENDING_WEBHOOK_JOBS`] (at most [`MAX_OVERFLOW_PER_JOB`] per call).
    fn make_room_for_webhook_job(&self, txn: &Txn) -> Result<(), StoreError> {
        let over = (txn.webhook_job_count()? + 1).saturating_sub(MAX_PENDING_WEBHOOK_JOBS);
        for _ in 0..over.min(MAX_OVERFLOW_PER_JOB) {
            let Some((seq, bytes)) = txn.first_webhook_job()? else {
                break;
            };
            let job = WebhookJob::decode(&bytes)?;
            dead_letter(txn, seq, job)?;
            if job.dead {
                // Already dead-lettered by an older version; only its table changed.
                continue;
            }
            // Counted before the caller commits: a dropped transaction over-counts by one.
            self.metrics.inc(Counter::WebhookDeadLettered);
            if !self.warned_backlog.replace(true) {
                log::warn!(
                    "webhook: {MAX_PENDING_WEBHOOK_JOBS} deliveries are waiting; dead-lettering \
                     the oldest (event {}), and from now on the oldest whenever another event \
                     comes (logged once per run; see interopd_webhook_dead_lettered_total)",
                    job.event_seq
                );
            }
        }
        Ok(())
    }

    /// After the commit of a [`EventBus::record_message`]: counts it and wakes the waiters.
    pub fn publish_message(&self, _cursor: u64) {
        self.metrics.inc(Counter::MessageIn);
        self.notify();
    }

    /// After the commit of a [`EventBus::record_status`]: counts it and wakes the waiters.
    pub fn publish_status(&self, _id: &str, status: OutboxStatus) {
        self.metrics.inc(Counter::MessageOut(status));
        self.notify();
    }

    /// After the commit of a [`EventBus::record_identity`]: counts it, logs it (ids and
    /// fingerprints only) and wakes the waiters.
    pub fn publish_identity(&self, change: &crate::client::IdentityChange) {
        self.metrics.inc(Counter::IdentityChanged);
        let d = &change.device;
        log::warn!(
            "identity: contact {} device {} changed its identity key ({} -> {}){}",
            d.user,
            d.device.unwrap_or(0),
            crate::signal::fingerprint(&change.previous, &d.user),
            crate::signal::fingerprint(&change.current, &d.user),
            if change.held {
                "; the contact was verified, so messages to and from it are held until \
                 POST /v1/contacts/{phone}/trust"
            } else {
                ""
            }
        );
        self.notify();
    }

    /// Wakes every waiter without counting anything.
    pub fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        self.wake.notify(usize::MAX);
    }

    /// A listener that completes at the next [`EventBus::notify`]. Create it *before* reading
    /// the store, then await it only if the store had nothing new: no wake-up is lost.
    pub fn listen(&self) -> event_listener::EventListener {
        self.wake.listen()
    }

    /// How many notifications have happened (wrapping).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn row(status: OutboxStatus) -> OutboxRow {
        OutboxRow {
            id: "3EB0000000000000000001".into(),
            to: "15550100".into(),
            kind: 0,
            status,
            created_ms: 1,
            updated_ms: 7,
            error_code: if status == OutboxStatus::Failed {
                "not_opted_in".into()
            } else {
                String::new()
            },
            content: vec![],
            stanza: vec![],
        }
    }

    #[test]
    fn events_round_trip_through_their_bytes() {
        for e in [
            Event::Message { cursor: 42 },
            Event::Status {
                id: "3EB0AA".into(),
                status: OutboxStatus::Failed,
                error_code: "unknown_user".into(),
                updated_ms: 9,
            },
            Event::Identity {
                user: "15550100".into(),
                device: 3,
                previous: [1; 32],
                current: [2; 32],
                held: true,
                at_ms: 11,
            },
        ] {
            assert_eq!(Event::decode(&e.encode().unwrap()).unwrap(), e);
        }
        let long = Event::Identity {
            user: "1".repeat(MAX_IDENTITY_USER_BYTES + 1),
            device: 0,
            previous: [0; 32],
            current: [0; 32],
            held: false,
            at_ms: 0,
        };
        assert!(matches!(long.encode(), Err(StoreError::TooLarge { .. })));
        let mut bad_flag = Event::Identity {
            user: "1".into(),
            device: 0,
            previous: [0; 32],
            current: [0; 32],
            held: false,
            at_ms: 0,
        }
        .encode()
        .unwrap();
        bad_flag[2] = 2;
        assert!(matches!(
            Event::decode(&bad_flag),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn malformed_event_rows_are_typed_errors() {
        let good = Event::Message { cursor: 1 }.encode().unwrap();
        let mut long = good.clone();
        long.push(0);
        for bad in [
            &b""[..],
            &[2u8, 1][..],
            &[1u8, 9, 0][..],
            &good[..5],
            &long[..],
        ] {
            assert!(matches!(
                Event::decode(bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn webhook_job_round_trips() {
        let job = WebhookJob {
            event_seq: 3,
            attempts: 2,
            created_ms: 10,
            next_attempt_ms: 20,
            dead: true,
        };
        assert_eq!(WebhookJob::decode(&job.encode()).unwrap(), job);
        let mut bad = job.encode();
        if let Some(last) = bad.last_mut() {
            *last = 7;
        }
        assert!(WebhookJob::decode(&bad).is_err());
    }

    #[test]
    fn recorded_events_get_increasing_ids_and_jobs_only_with_webhooks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let metrics = Rc::new(Metrics::default());
        let plain = EventBus::new(false, Rc::clone(&metrics));
        let hooked = EventBus::new(true, metrics);
        let txn = store.begin().unwrap();
        assert_eq!(plain.record_message(&txn, 1, 5).unwrap(), 1);
        assert_eq!(txn.webhook_job_count().unwrap(), 0);
        assert_eq!(
            hooked
                .record_status(&txn, &row(OutboxStatus::Failed))
                .unwrap(),
            2
        );
        txn.commit().unwrap();
        let txn = store.begin().unwrap();
        let events = txn.events_after(0, 10).unwrap();
        assert_eq!(events.len(), 2);
        let (_, job) = &txn.webhook_jobs(0, 10).unwrap()[0];
        assert_eq!(WebhookJob::decode(job).unwrap().event_seq, 2);
        assert_eq!(txn.last_event_seq().unwrap(), 2);
    }

    #[test]
    fn a_job_beyond_the_pending_bound_dead_letters_the_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let metrics = Rc::new(Metrics::default());
        let bus = EventBus::new(true, Rc::clone(&metrics));
        let txn = store.begin().unwrap();
        let waiting = |n| WebhookJob {
            event_seq: n,
            attempts: 0,
            created_ms: 0,
            next_attempt_ms: 0,
            dead: false,
        };
        for n in 1..=MAX_PENDING_WEBHOOK_JOBS {
            txn.push_webhook_job(&waiting(n).encode()).unwrap();
        }
        let event = bus.record_message(&txn, 1, 5).unwrap();
        assert_eq!(txn.webhook_job_count().unwrap(), MAX_PENDING_WEBHOOK_JOBS);
        let (first, _) = txn.first_webhook_job().unwrap().unwrap();
        assert_eq!(first, 2, "the oldest waiting job left the live table");
        let dead = txn.dead_webhook_jobs(0, 10).unwrap();
        assert_eq!(dead.len(), 1);
        let gone = WebhookJob::decode(&dead[0].1).unwrap();
        assert_eq!((dead[0].0, gone.event_seq, gone.dead), (1, 1, true));
        assert_eq!(metrics.counter(Counter::WebhookDeadLettered), 1);
        // The new event's job is the newest live one.
        let (_, last) = txn
            .webhook_jobs(MAX_PENDING_WEBHOOK_JOBS, 10)
            .unwrap()
            .remove(0);
        assert_eq!(WebhookJob::decode(&last).unwrap().event_seq, event);
    }

    #[test]
    fn a_dropped_transaction_gives_its_event_id_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let bus = EventBus::new(true, Rc::new(Metrics::default()));
        {
            let txn = store.begin().unwrap();
            bus.record_message(&txn, 1, 5).unwrap();
        }
        let txn = store.begin().unwrap();
        assert_eq!(bus.record_message(&txn, 1, 5).unwrap(), 1);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_rows_never_panic_and_accepted_ones_are_canonical(
                row in proptest::collection::vec(any::<u8>(), 0..160)
            ) {
                if let Ok(e) = Event::decode(&row) {
                    prop_assert_eq!(e.encode().unwrap(), row.clone());
                }
                if let Ok(j) = WebhookJob::decode(&row) {
                    prop_assert_eq!(j.encode(), row);
                }
            }

            #[test]
            fn status_events_round_trip(
                id in "[A-Z0-9]{0,30}",
                code in "[a-z_]{0,64}",
                status in 0u8..5,
                updated_ms in any::<u64>(),
            ) {
                let e = Event::Status {
                    id,
                    status: OutboxStatus::from_byte(status).unwrap(),
                    error_code: code,
                    updated_ms,
                };
                prop_assert_eq!(Event::decode(&e.encode().unwrap()).unwrap(), e);
            }

            #[test]
            fn identity_events_round_trip(
                user in "[0-9]{1,64}",
                device in any::<u32>(),
                previous in any::<[u8; 32]>(),
                current in any::<[u8; 32]>(),
                held in any::<bool>(),
                at_ms in any::<u64>(),
            ) {
                let e = Event::Identity { user, device, previous, current, held, at_ms };
                prop_assert_eq!(Event::decode(&e.encode().unwrap()).unwrap(), e);
            }

            #[test]
            fn group_events_round_trip(group in "[0-9]{1,32}", change in "[a-z]{1,16}", members in proptest::collection::vec("[0-9]{5,15}@s\\.whatsapp\\.net", 0..=MAX_GROUP_EVENT_MEMBERS), at_ms in any::<u64>()) {
                let e = Event::Group { group, change, members, at_ms };
                prop_assert_eq!(Event::decode(&e.encode().unwrap()).unwrap(), e);
            }

            #[test]
            fn typing_events_round_trip(user in "[0-9]{1,64}", composing in any::<bool>(), at_ms in any::<u64>()) {
                let e = Event::Typing { user, composing, at_ms };
                prop_assert_eq!(Event::decode(&e.encode().unwrap()).unwrap(), e);
            }
        }
    }

    #[test]
    fn a_listener_made_before_publish_completes() {
        let bus = EventBus::new(false, Rc::new(Metrics::default()));
        let listener = bus.listen();
        bus.publish_status("x", OutboxStatus::Sent);
        futures_lite::future::block_on(listener);
        assert_eq!(bus.generation(), 1);
    }
}
