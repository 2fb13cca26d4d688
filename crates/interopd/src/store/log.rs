//! The event log, idempotency keys and read marks (events and read marks are opaque here).
//! Table layouts: docs/store.md.

use super::*;

impl Txn {
    // ---- event log, idempotency keys, read marks (events and read marks are opaque here) ----

    /// Appends one event to the durable event log and returns its sequence number, which is
    /// the SSE `id:`. Call it in the same transaction as the row change it reports.
    pub fn append_event(&self, event: &[u8]) -> Result<u64, StoreError> {
        let seq = self.next_seq("event_seq")?;
        self.inner
            .open_table(EVENTS)?
            .insert(&seq.to_be_bytes(), event)?;
        Ok(seq)
    }

    /// Events after sequence number `after`, in order, at most `limit`.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(EVENTS)?;
        scan_u64_table(&t, after, limit)
    }

    /// One event by sequence number.
    pub fn event(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.inner.open_table(EVENTS)?;
        Ok(t.get(&seq.to_be_bytes())?.map(|v| v.value().to_vec()))
    }

    /// The last event sequence number issued (0 before the first event).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let t = self.inner.open_table(META)?;
        let v = t.get("event_seq")?;
        Ok(v.map(|v| be_u64(v.value(), "meta"))
            .transpose()?
            .unwrap_or(0))
    }

    /// The last inbox cursor issued (0 before the first message).
    pub fn last_inbox_cursor(&self) -> Result<u64, StoreError> {
        let t = self.inner.open_table(META)?;
        let v = t.get("inbox_seq")?;
        Ok(v.map(|v| be_u64(v.value(), "meta"))
            .transpose()?
            .unwrap_or(0))
    }

    /// One inbox row by cursor.
    pub fn inbox_get(&self, cursor: u64) -> Result<Option<InboxRow>, StoreError> {
        let t = self.inner.open_table(INBOX)?;
        t.get(&cursor.to_be_bytes())?
            .map(|v| decode_inbox(v.value()))
            .transpose()
    }

    /// The message id an API idempotency key created, if the key was used before.
    pub fn idempotency(&self, key: &str) -> Result<Option<String>, StoreError> {
        check_key(key)?;
        let t = self.inner.open_table(IDEMPOTENCY)?;
        let row = t.get(key)?;
        row.map(|v| decode_idempotency(v.value())).transpose()
    }

    /// Records that API idempotency key `key` created message `message_id`.
    pub fn put_idempotency(&self, key: &str, message_id: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let row = encode_idempotency(message_id)?;
        self.inner
            .open_table(IDEMPOTENCY)?
            .insert(key, row.as_slice())?;
        Ok(())
    }

    /// Removes idempotency keys whose message has no outbox row any more (retention took it),
    /// at most `limit` of them, and returns how many went. Reads every key: call it only when
    /// keys can have been orphaned.
    pub fn idempotency_remove_orphans(&self, limit: usize) -> Result<usize, StoreError> {
        let mut orphans = Vec::new();
        {
            let keys = self.inner.open_table(IDEMPOTENCY)?;
            let by_id = self.inner.open_table(OUTBOX_BY_ID)?;
            for item in keys.iter()? {
                if orphans.len() >= limit {
                    break;
                }
                let (k, v) = item?;
                let id = decode_idempotency(v.value())?;
                if by_id.get(id.as_str())?.is_none() {
                    orphans.push(k.value().to_owned());
                }
            }
        }
        let mut keys = self.inner.open_table(IDEMPOTENCY)?;
        for k in &orphans {
            keys.remove(k.as_str())?;
        }
        Ok(orphans.len())
    }

    /// How many idempotency keys are stored (O(1)).
    pub fn idempotency_len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(IDEMPOTENCY)?.len()?)
    }

    /// Records a read mark for the inbox message at `cursor` (the row layout is the API's).
    pub fn put_read_mark(&self, cursor: u64, row: &[u8]) -> Result<(), StoreError> {
        self.inner
            .open_table(READ_MARKS)?
            .insert(&cursor.to_be_bytes(), row)?;
        Ok(())
    }

    /// Read marks in cursor order, starting after `after`, at most `limit`.
    pub fn read_marks(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(READ_MARKS)?;
        scan_u64_table(&t, after, limit)
    }

    /// One read mark by inbox cursor.
    pub fn read_mark(&self, cursor: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.inner.open_table(READ_MARKS)?;
        Ok(t.get(&cursor.to_be_bytes())?.map(|v| v.value().to_vec()))
    }

    // ---- the MQTT bridge's meta keys (docs/store.md, docs/mqtt.md) ----

    /// The inbox cursor up to which the MQTT bridge's publishes were acknowledged by the
    /// broker (`None`: the bridge never ran on this store).
    pub fn mqtt_inbox_cursor(&self) -> Result<Option<u64>, StoreError> {
        let t = self.inner.open_table(META)?;
        let v = t.get(META_MQTT_INBOX_CURSOR)?;
        v.map(|v| be_u64(v.value(), "meta")).transpose()
    }

    /// Records that the broker acknowledged every inbox message up to `cursor`.
    pub fn set_mqtt_inbox_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.inner
            .open_table(META)?
            .insert(META_MQTT_INBOX_CURSOR, &cursor.to_be_bytes()[..])?;
        Ok(())
    }

    /// The contacts (digits, comma-separated) whose Home Assistant notify entities the MQTT
    /// bridge published last, so that a removed one gets an empty retained config.
    pub fn mqtt_discovered(&self) -> Result<Vec<String>, StoreError> {
        let t = self.inner.open_table(META)?;
        let Some(v) = t.get(META_MQTT_DISCOVERED)? else {
            return Ok(Vec::new());
        };
        let text = std::str::from_utf8(v.value()).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "mqtt_discovered is not UTF-8",
        })?;
        Ok(text
            .split(',')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Records the contacts whose notify entities are published now.
    pub fn set_mqtt_discovered(&self, digits: &[String]) -> Result<(), StoreError> {
        let text = digits.join(",");
        self.inner
            .open_table(META)?
            .insert(META_MQTT_DISCOVERED, text.as_bytes())?;
        Ok(())
    }
}

/// `meta` key of [`Txn::mqtt_inbox_cursor`] (u64 big-endian).
const META_MQTT_INBOX_CURSOR: &str = "mqtt_inbox_cursor";
/// `meta` key of [`Txn::mqtt_discovered`] (UTF-8 digits, comma-separated).
const META_MQTT_DISCOVERED: &str = "mqtt_discovered";
