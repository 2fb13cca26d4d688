//! Device lists and the outbox: what we send, its status machine's stored half, and
//! the lookups by message id. Table layouts: docs/store.md.

use super::*;

impl Txn {
    // ---- device lists -------------------------------------------------------------------

    /// Forgets `user`'s cached device list, so the next send fetches it afresh.
    pub fn forget_device_list(&self, user: &str) -> Result<(), StoreError> {
        self.put_device_list(
            user,
            &DeviceList {
                fetched_ms: 0,
                devices: Vec::new(),
            },
        )
    }

    pub fn put_device_list(&self, user: &str, list: &DeviceList) -> Result<(), StoreError> {
        check_key(user)?;
        if list.devices.len() > MAX_DEVICES_PER_USER {
            return Err(StoreError::TooLarge {
                what: "device list",
                len: list.devices.len() as u64,
                max: MAX_DEVICES_PER_USER as u64,
            });
        }
        let mut v = Vec::with_capacity(11 + 4 * list.devices.len());
        v.push(1);
        v.extend_from_slice(&list.fetched_ms.to_be_bytes());
        v.extend_from_slice(&(list.devices.len() as u16).to_be_bytes());
        for d in &list.devices {
            v.extend_from_slice(&d.to_be_bytes());
        }
        let mut t = self.inner.open_table(DEVICE_LISTS)?;
        t.insert(user, v.as_slice())?;
        Ok(())
    }

    pub fn device_list(&self, user: &str) -> Result<Option<DeviceList>, StoreError> {
        let t = self.inner.open_table(DEVICE_LISTS)?;
        let Some(v) = t.get(user)? else {
            return Ok(None);
        };
        let mut r = Reader::new(v.value(), "device_lists");
        r.version(1)?;
        let fetched_ms = r.u64()?;
        let n = r.u16()?;
        let mut devices = Vec::with_capacity(usize::from(n).min(MAX_DEVICES_PER_USER));
        for _ in 0..n {
            devices.push(r.u32()?);
        }
        r.end()?;
        Ok(Some(DeviceList {
            fetched_ms,
            devices,
        }))
    }

    // ---- outbox -------------------------------------------------------------------------

    /// Queues a new outbound message and returns its sequence number.
    pub fn outbox_insert(&self, row: &OutboxRow) -> Result<u64, StoreError> {
        let seq = self.next_seq("outbox_seq")?;
        self.outbox_write(seq, row)?;
        let mut by_id = self.inner.open_table(OUTBOX_BY_ID)?;
        by_id.insert(row.id.as_str(), &seq.to_be_bytes())?;
        Ok(seq)
    }

    /// Removes outbox row `seq` (message `id`); retention only.
    pub fn outbox_remove(&self, seq: u64, id: &str) -> Result<(), StoreError> {
        self.inner.open_table(OUTBOX)?.remove(&seq.to_be_bytes())?;
        self.inner.open_table(OUTBOX_BY_ID)?.remove(id)?;
        self.delete_group_receipts(id)?;
        self.remove_note(id)
    }

    /// Rows in the outbox (queued and finished).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(OUTBOX)?.len()?)
    }

    /// Outbox rows in `status`, read from each row's status byte without decoding the rest
    /// (at most `retention::MAX_OUTBOX_ROWS` rows to look at). A row too short to have one is
    /// corrupt.
    pub fn outbox_count(&self, status: OutboxStatus) -> Result<u64, StoreError> {
        let t = self.inner.open_table(OUTBOX)?;
        let mut n = 0u64;
        for row in t.iter()? {
            let (_, v) = row?;
            // The layout of encode_outbox: version, kind, status, ...
            let Some(&byte) = v.value().get(2) else {
                return Err(StoreError::Corrupt {
                    table: "outbox",
                    detail: "row too short",
                });
            };
            n += u64::from(byte == status as u8);
        }
        Ok(n)
    }

    /// Removes inbox row `cursor`, its dedupe key and its read mark; retention only.
    pub fn inbox_remove(&self, cursor: u64, dedupe_key: &str) -> Result<(), StoreError> {
        let key = cursor.to_be_bytes();
        self.inner.open_table(INBOX)?.remove(&key)?;
        self.inner.open_table(DEDUPE)?.remove(dedupe_key)?;
        self.inner.open_table(READ_MARKS)?.remove(&key)?;
        self.remove_note(dedupe_key)
    }

    /// Rows in the inbox.
    pub fn inbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(INBOX)?.len()?)
    }

    /// Removes the oldest events so that at most `keep` remain; returns how many went.
    pub fn events_trim(&self, keep: u64) -> Result<u64, StoreError> {
        let mut t = self.inner.open_table(EVENTS)?;
        let len = t.len()?;
        let excess = len.saturating_sub(keep);
        for _ in 0..excess {
            if t.pop_first()?.is_none() {
                break;
            }
        }
        Ok(excess)
    }

    /// Rewrites an existing row (status change, new stanza bytes).
    pub fn outbox_write(&self, seq: u64, row: &OutboxRow) -> Result<(), StoreError> {
        let bytes = encode_outbox(row)?;
        let mut t = self.inner.open_table(OUTBOX)?;
        t.insert(&seq.to_be_bytes(), bytes.as_slice())?;
        Ok(())
    }

    pub fn outbox_by_id(&self, id: &str) -> Result<Option<(u64, OutboxRow)>, StoreError> {
        let by_id = self.inner.open_table(OUTBOX_BY_ID)?;
        let Some(seq) = by_id.get(id)?.map(|v| u64::from_be_bytes(*v.value())) else {
            return Ok(None);
        };
        let t = self.inner.open_table(OUTBOX)?;
        let Some(v) = t.get(&seq.to_be_bytes())? else {
            return Err(StoreError::Corrupt {
                table: "outbox_by_id",
                detail: "dangling id",
            });
        };
        Ok(Some((seq, decode_outbox(v.value())?)))
    }

    /// Rows in queue order, starting after `after_seq`, at most `limit`.
    pub fn outbox_scan(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxRow)>, StoreError> {
        let t = self.inner.open_table(OUTBOX)?;
        scan_u64_table(&t, after_seq, limit)?
            .into_iter()
            .map(|(seq, v)| Ok((seq, decode_outbox(&v)?)))
            .collect()
    }
}
