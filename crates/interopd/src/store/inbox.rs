//! The inbox and its dedupe index, and received media waiting for their blob
//! (`pending_inbox`). Table layouts: docs/store.md.

use super::*;

impl Txn {
    // ---- inbox and dedupe -----------------------------------------------------------------

    /// Stores an inbound message unless `dedupe_key` was seen before. Returns the new cursor,
    /// or `None` for a redelivery (which the caller acks again without storing).
    pub fn inbox_insert(
        &self,
        dedupe_key: &str,
        row: &InboxRow,
    ) -> Result<Option<u64>, StoreError> {
        check_key(dedupe_key)?;
        if self.seen(dedupe_key)? {
            return Ok(None);
        }
        self.inbox_append(dedupe_key, row).map(Some)
    }

    /// Whether a message with this dedupe key is in the inbox or pending.
    fn seen(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        Ok(self.inner.open_table(DEDUPE)?.get(dedupe_key)?.is_some()
            || self
                .inner
                .open_table(PENDING_INBOX)?
                .get(dedupe_key)?
                .is_some())
    }

    /// Holds a received message out of the inbox until its media is ready. `false` (nothing
    /// stored) for a message already in the inbox or pending.
    pub fn pending_inbox_insert(
        &self,
        dedupe_key: &str,
        pending: &PendingInbox,
    ) -> Result<bool, StoreError> {
        check_key(dedupe_key)?;
        if self.seen(dedupe_key)? {
            return Ok(false);
        }
        self.pending_inbox_put(dedupe_key, pending)?;
        Ok(true)
    }

    /// Rewrites a pending message (attempt count, next attempt time).
    pub fn pending_inbox_put(
        &self,
        dedupe_key: &str,
        pending: &PendingInbox,
    ) -> Result<(), StoreError> {
        check_key(dedupe_key)?;
        let mut v = vec![PENDING_INBOX_ROW_VERSION];
        v.extend_from_slice(&pending.attempts.to_be_bytes());
        v.extend_from_slice(&pending.next_ms.to_be_bytes());
        put_bytes(&mut v, "pending inbox row", &encode_inbox(&pending.row)?)?;
        self.inner
            .open_table(PENDING_INBOX)?
            .insert(dedupe_key, v.as_slice())?;
        Ok(())
    }

    /// Pending messages in dedupe-key order, at most `limit`.
    pub fn pending_inbox(&self, limit: usize) -> Result<Vec<(String, PendingInbox)>, StoreError> {
        let t = self.inner.open_table(PENDING_INBOX)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode_pending(v.value())?));
        }
        Ok(out)
    }

    /// Moves a pending message into the inbox; its cursor, or `None` if it was not pending.
    pub fn pending_inbox_release(&self, dedupe_key: &str) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self
            .inner
            .open_table(PENDING_INBOX)?
            .remove(dedupe_key)?
            .map(|v| v.value().to_vec())
        else {
            return Ok(None);
        };
        let pending = decode_pending(&bytes)?;
        self.inbox_append(dedupe_key, &pending.row).map(Some)
    }

    /// How many messages wait for their media.
    pub fn pending_inbox_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(PENDING_INBOX)?.len()?)
    }

    fn inbox_append(&self, dedupe_key: &str, row: &InboxRow) -> Result<u64, StoreError> {
        let cursor = self.next_seq("inbox_seq")?;
        let bytes = encode_inbox(row)?;
        self.inner
            .open_table(INBOX)?
            .insert(&cursor.to_be_bytes(), bytes.as_slice())?;
        self.inner
            .open_table(DEDUPE)?
            .insert(dedupe_key, &cursor.to_be_bytes())?;
        Ok(cursor)
    }

    /// The received message with id `id` from whoever sent it: its dedupe key (which names
    /// the sender), cursor and row. A scan over the dedupe index, which retention bounds
    /// (`retention::MAX_INBOX_ROWS`); the newest match wins if two senders used one id.
    pub fn inbox_by_message_id(
        &self,
        id: &str,
    ) -> Result<Option<(String, u64, InboxRow)>, StoreError> {
        let suffix = format!("|{id}");
        let t = self.inner.open_table(DEDUPE)?;
        let mut found: Option<(String, u64)> = None;
        for item in t.iter()? {
            let (k, v) = item?;
            if k.value().ends_with(&suffix) {
                let cursor = u64::from_be_bytes(*v.value());
                if found.as_ref().is_none_or(|(_, c)| cursor > *c) {
                    found = Some((k.value().to_owned(), cursor));
                }
            }
        }
        let Some((key, cursor)) = found else {
            return Ok(None);
        };
        Ok(self.inbox_get(cursor)?.map(|row| (key, cursor, row)))
    }

    pub fn inbox_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxRow)>, StoreError> {
        let t = self.inner.open_table(INBOX)?;
        scan_u64_table(&t, after, limit)?
            .into_iter()
            .map(|(seq, v)| Ok((seq, decode_inbox(&v)?)))
            .collect()
    }
}
