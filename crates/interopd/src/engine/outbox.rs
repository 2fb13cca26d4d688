//! The outbox status machine: which queued rows go out on this connection, how a row is held
//! for a changed verified identity and released once trusted, and how status changes move
//! rows forward (queued → sent → delivered → read, or → failed), each recorded in the API's
//! event log in the same transaction.

use super::*;
use crate::store::Txn;

/// The `error_code` of a queued row held for a changed verified identity.
pub const HELD_CODE: &str = "identity_changed";

/// One outbox status change: message id, new status, error code (empty unless failed).
pub type StatusChange = (String, OutboxStatus, String);

impl<R: Rng + CryptoRng> Engine<R> {
    /// Starts queued outbox rows not yet started on this connection, at most
    /// [`OUTBOX_BATCH`] per call and only as far as the [`SEND_WINDOW`] has room; returns
    /// whether more may be waiting that room allows now. A row whose stanza was committed
    /// before (a crash or a lost connection) is resent byte-identical.
    pub(super) fn flush_outbox(&mut self) -> Result<bool, StoreError> {
        let room = SEND_WINDOW.saturating_sub(self.in_flight.len());
        if room == 0 {
            // An ack frees a slot and wakes the engine again.
            return Ok(false);
        }
        let take = room.min(OUTBOX_BATCH);
        let (rows, more) = {
            let txn = self.store.begin()?;
            let mut out = Vec::new();
            let mut after = self.scan_after;
            let mut more = false;
            let mut released = false;
            'scan: loop {
                let batch = txn.outbox_scan(after, OUTBOX_BATCH)?;
                let Some((last, _)) = batch.last() else { break };
                let last = *last;
                for (seq, mut row) in batch {
                    if row.status != OutboxStatus::Queued || self.started.contains(&row.id) {
                        after = seq;
                        continue;
                    }
                    if row.error_code == HELD_CODE {
                        if identity_pending(&txn, &row.to)? {
                            after = seq;
                            continue;
                        }
                        // Trusted again: the row goes out like any queued row.
                        row.error_code.clear();
                        txn.outbox_write(seq, &row)?;
                        released = true;
                    }
                    if out.len() >= take {
                        more = true;
                        break 'scan;
                    }
                    after = seq;
                    out.push(row);
                }
                after = after.max(last);
            }
            self.scan_after = after;
            if released {
                txn.commit()?;
            }
            (out, more)
        };
        let now_ms = self.now_ms;
        for row in rows {
            self.started.insert(row.id.clone());
            if row.stanza.is_empty() {
                if let Err(e) = self.client.send_outbox(&row, now_ms, &mut self.rng) {
                    log::warn!("link: message {} not started: {e}", row.id);
                    self.started.remove(&row.id);
                    // The next wake looks at it (and what follows it) again.
                    self.scan_after = 0;
                    return Ok(false);
                }
            } else {
                self.client.send_committed(row.stanza.clone(), now_ms);
            }
            // `take` is at most the room left, so the window has a slot for each row.
            if self.in_flight.push_back((row.id.clone(), now_ms)).is_err() {
                log::error!("link: send window full at message {}", row.id);
            }
        }
        Ok(more && self.in_flight.len() < SEND_WINDOW)
    }
}

/// Whether any device of `user` holds a new identity that awaits the household's trust.
fn identity_pending(txn: &Txn, user: &str) -> Result<bool, StoreError> {
    // A group's row waits while any member's identity does.
    if let Ok(g) = crate::group::GroupId::parse_jid(user) {
        let Some(row) = txn.group(g.as_str())? else {
            return Ok(false);
        };
        for m in &row.members {
            if let Ok(j) = crate::jid::Jid::parse(&m.jid)
                && identity_pending(txn, &j.user)?
            {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    match crate::signal::remote_identities(txn, user) {
        Ok(ids) => Ok(ids.iter().any(|(_, r)| r.pending.is_some())),
        Err(crate::signal::SignalError::Store(e)) => Err(e),
        Err(e) => {
            log::warn!("link: identity of {user} unreadable: {e}");
            Ok(true)
        }
    }
}

/// Keeps a row queued with [`HELD_CODE`], and tells consumers why it waits.
pub(super) fn hold(store: &Store, bus: &EventBus, id: &str, now_ms: u64) -> Result<(), StoreError> {
    let txn = store.begin()?;
    let Some((seq, mut row)) = txn.outbox_by_id(id)? else {
        return Ok(());
    };
    if row.status != OutboxStatus::Queued {
        return Ok(());
    }
    row.error_code = HELD_CODE.to_owned();
    row.stanza.clear();
    row.updated_ms = now_ms;
    txn.outbox_write(seq, &row)?;
    bus.record_status(&txn, &row)?;
    txn.commit()?;
    bus.publish_status(&row.id, row.status);
    Ok(())
}

/// Moves outbox rows forward (queued → sent → delivered → read, or → failed) and records
/// each change in the event log, all in one transaction; then wakes the readers. A change
/// that would move a row backwards, or out of `failed`, is ignored.
pub fn apply_statuses(
    store: &Store,
    bus: &EventBus,
    changes: &[StatusChange],
    now_ms: u64,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let rank = |s: OutboxStatus| match s {
        OutboxStatus::Queued => 0,
        OutboxStatus::Sent => 1,
        OutboxStatus::Delivered => 2,
        OutboxStatus::Read => 3,
        OutboxStatus::Failed => 4,
    };
    let txn = store.begin()?;
    let mut published = Vec::new();
    for (id, status, error) in changes {
        let Some((seq, mut row)) = txn.outbox_by_id(id)? else {
            log::info!("link: {status:?} for message {id}, which is not in the outbox; ignored");
            continue;
        };
        if rank(*status) <= rank(row.status) || row.status == OutboxStatus::Failed {
            continue;
        }
        row.status = *status;
        row.updated_ms = now_ms;
        if *status == OutboxStatus::Failed {
            row.error_code = error.clone();
        } else if row.error_code == HELD_CODE {
            row.error_code.clear();
        }
        txn.outbox_write(seq, &row)?;
        bus.record_status(&txn, &row)?;
        published.push((row.id, row.status));
    }
    txn.commit()?;
    for (id, status) in published {
        bus.publish_status(&id, status);
    }
    Ok(())
}
