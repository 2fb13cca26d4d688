//! Retention: what the store keeps, and for how long. Without it the outbox, the inbox and
//! the event log would grow for as long as the box runs. One [`sweep`] runs in one store
//! transaction, oldest rows first, and never touches a queued outbox row (a message not yet
//! taken by the gatekeeper is never dropped; the API refuses new ones instead, with
//! [`MAX_OUTBOX_ROWS`]).
//!
//! Finished outbox rows (sent, delivered, read, failed) keep their content because a peer's
//! retry receipt is answered from it; they go after [`SENT_RETENTION_MS`] or beyond
//! [`MAX_SENT_RETAINED`]. Inbox rows go after [`INBOX_RETENTION_MS`] or beyond
//! [`MAX_INBOX_ROWS`], with their dedupe keys and read marks. The event log keeps the newest
//! [`MAX_EVENT_ROWS`]; an SSE client resuming from an older id starts at the oldest kept.
//! An API idempotency key lives as long as the message it created: once that message's outbox
//! row is gone, the key goes too, so there are never many more keys than outbox rows.
//! No I/O beyond the caller's transaction; the clock comes in as `now_ms`.

use crate::jid::Jid;
use crate::store::{OutboxStatus, StoreError, Txn};

/// Most outbox rows (queued and finished). The API answers 429 `outbox_full` at this size;
/// the sweep keeps finished rows well below it, so in practice it bounds queued messages.
pub const MAX_OUTBOX_ROWS: u64 = 20_000;
/// Most finished outbox rows kept (their content answers retry receipts).
pub const MAX_SENT_RETAINED: u64 = 10_000;
/// How long a finished outbox row is kept after its last status change, in milliseconds
/// (30 days).
pub const SENT_RETENTION_MS: u64 = 30 * 24 * 3_600_000;
/// Most inbox rows kept.
pub const MAX_INBOX_ROWS: u64 = 100_000;
/// How long an inbox row is kept after it was received, in milliseconds (90 days).
pub const INBOX_RETENTION_MS: u64 = 90 * 24 * 3_600_000;
/// Most event log rows kept (SSE resume and webhook replay reach back this far).
pub const MAX_EVENT_ROWS: u64 = 100_000;
/// Rows looked at per scan step.
const SCAN_BATCH: usize = 256;
/// Most rows one sweep removes from each table, so one transaction stays small; the next
/// sweep goes on.
pub const MAX_REMOVED_PER_SWEEP: usize = 5_000;

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    pub outbox_rows: usize,
    pub inbox_rows: usize,
    pub events: u64,
    /// Idempotency keys whose message had no outbox row any more.
    pub idempotency_keys: usize,
}

/// Removes what is past its retention (call inside a transaction, then commit).
pub fn sweep(txn: &Txn, now_ms: u64) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();

    // Outbox: finished rows, oldest first, past their age or beyond the count.
    let mut finished = 0u64;
    let mut after = 0;
    let mut old_finished = Vec::new();
    loop {
        let batch = txn.outbox_scan(after, SCAN_BATCH)?;
        let Some((last, _)) = batch.last() else { break };
        after = *last;
        for (seq, row) in batch {
            if row.status == OutboxStatus::Queued {
                continue;
            }
            finished += 1;
            if now_ms.saturating_sub(row.updated_ms) >= SENT_RETENTION_MS {
                old_finished.push((seq, row.id));
            }
        }
    }
    let over = usize::try_from(finished.saturating_sub(MAX_SENT_RETAINED)).unwrap_or(usize::MAX);
    let by_age = old_finished.len();
    if over > by_age {
        // Beyond the count: the oldest finished rows go too, even if young.
        old_finished.clear();
        let mut after = 0;
        'scan: loop {
            let batch = txn.outbox_scan(after, SCAN_BATCH)?;
            let Some((last, _)) = batch.last() else { break };
            after = *last;
            for (seq, row) in batch {
                if row.status != OutboxStatus::Queued {
                    if old_finished.len() >= over {
                        break 'scan;
                    }
                    old_finished.push((seq, row.id));
                }
            }
        }
    }
    for (seq, id) in old_finished.into_iter().take(MAX_REMOVED_PER_SWEEP) {
        txn.outbox_remove(seq, &id)?;
        report.outbox_rows += 1;
    }

    // Inbox: cursors grow with time, so the oldest rows are the first ones.
    let mut excess =
        usize::try_from(txn.inbox_len()?.saturating_sub(MAX_INBOX_ROWS)).unwrap_or(usize::MAX);
    'inbox: loop {
        let batch = txn.inbox_after(0, SCAN_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for (cursor, row) in batch {
            let old = now_ms.saturating_sub(row.received_ms) >= INBOX_RETENTION_MS;
            if (!old && excess == 0) || report.inbox_rows >= MAX_REMOVED_PER_SWEEP {
                break 'inbox;
            }
            let dedupe = format!("{}|{}", Jid::whatsapp(row.from.clone(), None), row.id);
            txn.inbox_remove(cursor, &dedupe)?;
            excess = excess.saturating_sub(1);
            report.inbox_rows += 1;
        }
    }

    report.events = txn.events_trim(MAX_EVENT_ROWS)?;

    // Idempotency keys: a key is orphaned only when its message's outbox row goes, so look
    // (a full read of the keys) only after removing outbox rows, or when there are more keys
    // than rows, which proves orphans (each key names a different message). Keys left over
    // by a capped sweep or by older versions go at the next look.
    if report.outbox_rows > 0 || txn.idempotency_len()? > txn.outbox_len()? {
        report.idempotency_keys = txn.idempotency_remove_orphans(MAX_REMOVED_PER_SWEEP)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InboxRow, OutboxRow, Store};

    fn out(id: &str, status: OutboxStatus, updated_ms: u64) -> OutboxRow {
        OutboxRow {
            id: id.into(),
            to: "15550100".into(),
            kind: 1,
            status,
            created_ms: updated_ms,
            updated_ms,
            error_code: String::new(),
            content: vec![1],
            stanza: Vec::new(),
        }
    }

    #[test]
    fn old_finished_rows_go_and_queued_rows_always_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        txn.outbox_insert(&out("old-read", OutboxStatus::Read, 0))
            .unwrap();
        txn.outbox_insert(&out("old-queued", OutboxStatus::Queued, 0))
            .unwrap();
        txn.outbox_insert(&out("young-read", OutboxStatus::Read, SENT_RETENTION_MS))
            .unwrap();
        let r = sweep(&txn, SENT_RETENTION_MS + 1).unwrap();
        assert_eq!(r.outbox_rows, 1);
        assert!(txn.outbox_by_id("old-read").unwrap().is_none());
        assert!(txn.outbox_by_id("old-queued").unwrap().is_some());
        assert!(txn.outbox_by_id("young-read").unwrap().is_some());
    }

    /// An inbox row from the echo contact, received at `received_ms`.
    fn row(id: &str, received_ms: u64) -> InboxRow {
        InboxRow {
            group: String::new(),
            id: id.into(),
            from: "15550100".into(),
            t_secs: 1,
            received_ms,
            content: vec![1],
        }
    }

    /// The dedupe key of the echo contact's message `id`.
    fn key(id: &str) -> String {
        format!("{}|{id}", Jid::whatsapp("15550100", None))
    }

    #[test]
    fn old_inbox_rows_go_with_their_dedupe_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        txn.inbox_insert(&key("a"), &row("a", 0)).unwrap();
        txn.inbox_insert(&key("b"), &row("b", INBOX_RETENTION_MS))
            .unwrap();
        let r = sweep(&txn, INBOX_RETENTION_MS + 1).unwrap();
        assert_eq!(r.inbox_rows, 1);
        assert_eq!(txn.inbox_len().unwrap(), 1);
        // The dedupe key went with the row; the young one's stays.
        assert!(txn.inbox_insert(&key("a"), &row("a", 0)).unwrap().is_some());
        assert!(txn.inbox_insert(&key("b"), &row("b", 0)).unwrap().is_none());
    }

    #[test]
    fn read_marks_go_with_their_inbox_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        let old = txn.inbox_insert(&key("a"), &row("a", 0)).unwrap().unwrap();
        let young = txn
            .inbox_insert(&key("b"), &row("b", INBOX_RETENTION_MS))
            .unwrap()
            .unwrap();
        txn.put_read_mark(old, b"mark a").unwrap();
        txn.put_read_mark(young, b"mark b").unwrap();
        assert_eq!(sweep(&txn, INBOX_RETENTION_MS + 1).unwrap().inbox_rows, 1);
        assert_eq!(txn.read_mark(old).unwrap(), None);
        assert_eq!(
            txn.read_mark(young).unwrap().as_deref(),
            Some(&b"mark b"[..])
        );
    }

    #[test]
    fn idempotency_keys_go_with_their_messages_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        txn.outbox_insert(&out("old-read", OutboxStatus::Read, 0))
            .unwrap();
        txn.outbox_insert(&out("old-queued", OutboxStatus::Queued, 0))
            .unwrap();
        txn.outbox_insert(&out("young-read", OutboxStatus::Read, SENT_RETENTION_MS))
            .unwrap();
        txn.put_idempotency("k-old-read", "old-read").unwrap();
        txn.put_idempotency("k-old-queued", "old-queued").unwrap();
        txn.put_idempotency("k-young-read", "young-read").unwrap();
        let r = sweep(&txn, SENT_RETENTION_MS + 1).unwrap();
        assert_eq!((r.outbox_rows, r.idempotency_keys), (1, 1));
        assert_eq!(txn.idempotency("k-old-read").unwrap(), None);
        assert_eq!(
            txn.idempotency("k-old-queued").unwrap().as_deref(),
            Some("old-queued")
        );
        assert_eq!(
            txn.idempotency("k-young-read").unwrap().as_deref(),
            Some("young-read")
        );
        // A quiet sweep (no outbox row removed, no more keys than rows) does not look.
        assert_eq!(
            sweep(&txn, SENT_RETENTION_MS + 1).unwrap(),
            RetentionReport::default()
        );
    }

    #[test]
    fn orphaned_idempotency_keys_left_by_older_versions_go_once_they_outnumber_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        txn.outbox_insert(&out("live", OutboxStatus::Queued, 0))
            .unwrap();
        txn.put_idempotency("k-live", "live").unwrap();
        txn.put_idempotency("k-gone-1", "gone-1").unwrap();
        txn.put_idempotency("k-gone-2", "gone-2").unwrap();
        let r = sweep(&txn, 1).unwrap();
        assert_eq!((r.outbox_rows, r.idempotency_keys), (0, 2));
        assert_eq!(txn.idempotency_len().unwrap(), 1);
        assert!(txn.idempotency("k-live").unwrap().is_some());
    }
}
