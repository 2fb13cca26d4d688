//! The on-disk store: one redb file, `<state>/interopd.redb`, holding everything that must
//! survive a power cut (DESIGN.md section 6). This file owns the table definitions, the schema
//! version check, the byte layout of every key and value, and the state directory's permissions.
//! It knows nothing of Signal, XML or HTTP: callers open a [`Txn`], read and write typed rows,
//! and commit. One write transaction can carry a Signal session update together with an outbox
//! or inbox row, which is what makes "decrypt, commit, then ack" and "encrypt, commit, then
//! write" possible. Dropping a [`Txn`] without [`Txn::commit`] discards all of it.
//!
//! Format rules (docs/store.md has every table byte for byte):
//! - every multi-byte integer is fixed-width big-endian (`[u8; N]` keys sort numerically);
//! - no `usize` in the format, so a store moves between 64-bit and 32-bit ARM unchanged;
//! - every value that is a struct starts with a one-byte row version.

use std::path::{Path, PathBuf};

pub(crate) use crate::row::Reader;
use crate::signal_store::{IdTable, KeyTable, SignalStore};
use interop_io::signal_tables::SignalTables;
pub use interop_io::state_dir::{StoreError, ensure_state_dir, open_private_file};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The schema this build writes. A store with a larger version is refused.
pub const SCHEMA_VERSION: u32 = 1;
/// The file name of the database inside the state directory.
pub const DB_FILE_NAME: &str = "interopd.redb";
/// Bytes redb may use for its page cache. redb's own default is sized for servers; a home
/// gateway has a few MiB to spare.
pub const STORE_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Longest address key (`user.device`) we store, in bytes.
pub const MAX_ADDRESS_KEY_BYTES: usize = 256;
/// Most devices we keep for one user.
pub const MAX_DEVICES_PER_USER: usize = 64;

// Tables. Keys and values are raw bytes with the layouts documented in docs/store.md.
/// A `media` row with its id, as [`Txn::media_scan`] returns it.
pub type MediaEntry = ([u8; 16], Vec<u8>);

// The Signal engine's tables, shared with the hub's simulated devices (interop-io).
pub(crate) use interop_io::signal_tables::{
    LOCAL_IDENTITY, META, PREKEYS, REMOTE_IDENTITIES, SESSIONS, SIGNED_PREKEYS,
};
const DEVICE_LISTS: TableDefinition<&str, &[u8]> = TableDefinition::new("device_lists");
const OUTBOX: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("outbox");
const OUTBOX_BY_ID: TableDefinition<&str, &[u8; 8]> = TableDefinition::new("outbox_by_id");
const INBOX: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("inbox");
const DEDUPE: TableDefinition<&str, &[u8; 8]> = TableDefinition::new("dedupe");
const MEDIA: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("media");
/// Live webhook jobs, oldest first: the first row is the next one to deliver.
const WEBHOOK_JOBS: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("webhook_jobs");
/// Webhook jobs that gave up, under their original sequence number (docs/store.md).
const WEBHOOK_DEAD: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("webhook_dead");
const EVENTS: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("events");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const READ_MARKS: TableDefinition<&[u8; 8], &[u8]> = TableDefinition::new("read_marks");
/// Received media messages waiting for their blob, by dedupe key (docs/store.md).
const PENDING_INBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_inbox");
/// Row version of a `pending_inbox` value.
pub const PENDING_INBOX_ROW_VERSION: u8 = 1;
/// Row version of an `idempotency` value.
pub const IDEMPOTENCY_ROW_VERSION: u8 = 1;

const META_SCHEMA_VERSION: &str = "schema_version";

/// The open store. Cheap to share by reference; all access goes through transactions.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store in `state_dir`, creating the directory (0700) and file (0600) on first
    /// use, creating every table, and checking the schema version.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE_NAME);
        let file = open_private_file(&path)?;
        let mut builder = Database::builder();
        builder.set_cache_size(STORE_CACHE_BYTES);
        let backend = redb::backends::FileBackend::new(file)?;
        let db = builder.create_with_backend(backend)?;
        let store = Store { db, path };
        store.init_schema()?;
        Ok(store)
    }

    /// The database file's path (for logs and diagnostics).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let txn = self.begin()?;
        {
            let mut meta = txn.inner.open_table(META)?;
            let found = match meta.get(META_SCHEMA_VERSION)? {
                Some(v) => Some(be_u32(v.value(), "meta")?),
                None => None,
            };
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes()[..])?;
                }
            }
        }
        // Create every table so that read transactions never meet a missing one.
        txn.inner.open_table(LOCAL_IDENTITY)?;
        txn.inner.open_table(PREKEYS)?;
        txn.inner.open_table(SIGNED_PREKEYS)?;
        txn.inner.open_table(SESSIONS)?;
        txn.inner.open_table(REMOTE_IDENTITIES)?;
        txn.inner.open_table(DEVICE_LISTS)?;
        txn.inner.open_table(OUTBOX)?;
        txn.inner.open_table(OUTBOX_BY_ID)?;
        txn.inner.open_table(INBOX)?;
        txn.inner.open_table(DEDUPE)?;
        txn.inner.open_table(MEDIA)?;
        txn.inner.open_table(WEBHOOK_JOBS)?;
        txn.inner.open_table(WEBHOOK_DEAD)?;
        txn.inner.open_table(EVENTS)?;
        txn.inner.open_table(IDEMPOTENCY)?;
        txn.inner.open_table(READ_MARKS)?;
        txn.commit()
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(META_SCHEMA_VERSION)?.ok_or(StoreError::Corrupt {
            table: "meta",
            detail: "schema_version missing",
        })?;
        be_u32(v.value(), "meta")
    }

    /// Starts a write transaction. Only one is open at a time (redb serialises writers), which
    /// suits our single-threaded shell: batch a loop turn's work into one [`Txn`].
    pub fn begin(&self) -> Result<Txn, StoreError> {
        Ok(Txn {
            inner: self.db.begin_write()?,
        })
    }

    /// Test and migration hook: overwrite the recorded schema version.
    #[doc(hidden)]
    pub fn force_schema_version(&self, v: u32) -> Result<(), StoreError> {
        let txn = self.begin()?;
        txn.inner
            .open_table(META)?
            .insert(META_SCHEMA_VERSION, &v.to_be_bytes()[..])?;
        txn.commit()
    }
}

/// A write transaction. Reads see its own writes. Nothing reaches disk until [`Txn::commit`].
pub struct Txn {
    pub(crate) inner: redb::WriteTransaction,
}

/// Delivery state of an outbound message (DESIGN.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutboxStatus {
    Queued = 0,
    Sent = 1,
    Delivered = 2,
    Read = 3,
    Failed = 4,
}

impl OutboxStatus {
    /// The status from its stored byte; `None` for a byte no version wrote.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Queued,
            1 => Self::Sent,
            2 => Self::Delivered,
            3 => Self::Read,
            4 => Self::Failed,
            _ => return None,
        })
    }

    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }
}

/// One outbound message. `content` is the padded plaintext protobuf, kept so a retry receipt
/// can re-encrypt it; `stanza` is the exact encrypted stanza bytes last committed for the wire,
/// resent byte-identical after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub to: String,
    pub kind: u8,
    pub status: OutboxStatus,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub error_code: String,
    pub content: Vec<u8>,
    pub stanza: Vec<u8>,
}

/// A received message held out of the inbox until its media is downloaded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInbox {
    /// Download attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (wall clock, ms).
    pub next_ms: u64,
    pub row: InboxRow,
}

/// One inbound message, decrypted and committed before the server is acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    pub id: String,
    pub from: String,
    pub t_secs: u64,
    pub received_ms: u64,
    pub content: Vec<u8>,
}

/// A device list cached for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    pub fetched_ms: u64,
    pub devices: Vec<u32>,
}

impl Txn {
    /// Makes every write durable (fsync) or none of them.
    pub fn commit(self) -> Result<(), StoreError> {
        self.inner.commit()?;
        Ok(())
    }

    /// Discards every write. Dropping the transaction does the same.
    pub fn abort(self) -> Result<(), StoreError> {
        self.inner.abort()?;
        Ok(())
    }

    pub(crate) fn get_str_key(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.inner.open_table(def)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub(crate) fn put_str_key(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let mut t = self.inner.open_table(def)?;
        t.insert(key, value)?;
        Ok(())
    }

    fn next_seq(&self, key: &str) -> Result<u64, StoreError> {
        let mut t = self.inner.open_table(META)?;
        let cur = match t.get(key)? {
            Some(v) => be_u64(v.value(), "meta")?,
            None => 0,
        };
        let next = cur + 1;
        t.insert(key, &next.to_be_bytes()[..])?;
        Ok(next)
    }

    // ---- device lists -------------------------------------------------------------------

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
        Ok(())
    }

    /// Rows in the outbox (queued and finished).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(OUTBOX)?.len()?)
    }

    /// Removes inbox row `cursor`, its dedupe key and its read mark; retention only.
    pub fn inbox_remove(&self, cursor: u64, dedupe_key: &str) -> Result<(), StoreError> {
        let key = cursor.to_be_bytes();
        self.inner.open_table(INBOX)?.remove(&key)?;
        self.inner.open_table(DEDUPE)?.remove(dedupe_key)?;
        self.inner.open_table(READ_MARKS)?.remove(&key)?;
        Ok(())
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

    // ---- media index and webhook jobs (rows are opaque to the core; see docs/store.md) ----

    pub fn put_media(&self, id: &[u8; 16], row: &[u8]) -> Result<(), StoreError> {
        self.inner.open_table(MEDIA)?.insert(id, row)?;
        Ok(())
    }

    pub fn media(&self, id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.inner.open_table(MEDIA)?;
        Ok(t.get(id)?.map(|v| v.value().to_vec()))
    }

    /// Removes a media row; true if it existed.
    pub fn remove_media(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self.inner.open_table(MEDIA)?.remove(id)?.is_some())
    }

    /// Media rows with ids strictly after `after` (or from the start), in id order, at most
    /// `limit`.
    pub fn media_scan(
        &self,
        after: Option<&[u8; 16]>,
        limit: usize,
    ) -> Result<Vec<MediaEntry>, StoreError> {
        let t = self.inner.open_table(MEDIA)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&[u8; 16]>(a..)?,
            None => t.range::<&[u8; 16]>(..)?,
        };
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let key = *k.value();
            if after == Some(&key) {
                continue;
            }
            out.push((key, v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn push_webhook_job(&self, job: &[u8]) -> Result<u64, StoreError> {
        let seq = self.next_seq("webhook_seq")?;
        self.inner
            .open_table(WEBHOOK_JOBS)?
            .insert(&seq.to_be_bytes(), job)?;
        Ok(seq)
    }

    /// Removes live webhook job `seq`; true if it was there.
    pub fn remove_webhook_job(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .open_table(WEBHOOK_JOBS)?
            .remove(&seq.to_be_bytes())?
            .is_some())
    }

    /// Rewrites live webhook job `seq` (attempt count, next attempt time). Writes nothing and
    /// returns false if the job is no longer live (delivered or dead-lettered meanwhile).
    pub fn put_webhook_job(&self, seq: u64, job: &[u8]) -> Result<bool, StoreError> {
        let mut t = self.inner.open_table(WEBHOOK_JOBS)?;
        let key = seq.to_be_bytes();
        if t.get(&key)?.is_none() {
            return Ok(false);
        }
        t.insert(&key, job)?;
        Ok(true)
    }

    /// The oldest live webhook job, the next to deliver: one B-tree descent, not a scan.
    pub fn first_webhook_job(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_JOBS)?;
        let first = t.first()?;
        Ok(first.map(|(k, v)| (u64::from_be_bytes(*k.value()), v.value().to_vec())))
    }

    /// Live webhook jobs after sequence number `after`, in order, at most `limit`.
    pub fn webhook_jobs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_JOBS)?;
        scan_u64_table(&t, after, limit)
    }

    /// How many live webhook jobs are stored (O(1): redb keeps each table's length).
    pub fn webhook_job_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(WEBHOOK_JOBS)?.len()?)
    }

    /// Moves live webhook job `seq` into `webhook_dead` under the same key, stored as `job`
    /// (the caller's dead-lettered row), then drops the oldest dead jobs so that at most
    /// `keep_dead` remain. False, and nothing written, if `seq` is not a live job.
    pub fn dead_letter_webhook_job(
        &self,
        seq: u64,
        job: &[u8],
        keep_dead: u64,
    ) -> Result<bool, StoreError> {
        let key = seq.to_be_bytes();
        if self.inner.open_table(WEBHOOK_JOBS)?.remove(&key)?.is_none() {
            return Ok(false);
        }
        let mut dead = self.inner.open_table(WEBHOOK_DEAD)?;
        dead.insert(&key, job)?;
        let excess = dead.len()?.saturating_sub(keep_dead);
        for _ in 0..excess {
            if dead.pop_first()?.is_none() {
                break;
            }
        }
        Ok(true)
    }

    /// Removes dead-lettered webhook job `seq`; true if it was there.
    pub fn remove_dead_webhook_job(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .open_table(WEBHOOK_DEAD)?
            .remove(&seq.to_be_bytes())?
            .is_some())
    }

    /// Dead-lettered webhook jobs after sequence number `after`, in order, at most `limit`.
    pub fn dead_webhook_jobs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_DEAD)?;
        scan_u64_table(&t, after, limit)
    }

    /// How many dead-lettered webhook jobs are stored (O(1)).
    pub fn dead_webhook_job_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(WEBHOOK_DEAD)?.len()?)
    }

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
}

fn scan_u64_table(
    t: &redb::Table<'_, &'static [u8; 8], &'static [u8]>,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let start = after.saturating_add(1).to_be_bytes();
    let mut out = Vec::new();
    for item in t.range::<&[u8; 8]>(&start..)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((u64::from_be_bytes(*k.value()), v.value().to_vec()));
    }
    Ok(out)
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_ADDRESS_KEY_BYTES {
        return Err(StoreError::TooLarge {
            what: "key",
            len: key.len() as u64,
            max: MAX_ADDRESS_KEY_BYTES as u64,
        });
    }
    Ok(())
}

// ---- row codecs ---------------------------------------------------------------------------

const OUTBOX_ROW_VERSION: u8 = 1;
const INBOX_ROW_VERSION: u8 = 1;

fn put_bytes(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(b.len()).map_err(|_| StoreError::TooLarge {
        what,
        len: b.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn encode_outbox(r: &OutboxRow) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(64 + r.content.len() + r.stanza.len());
    v.push(OUTBOX_ROW_VERSION);
    v.push(r.kind);
    v.push(r.status as u8);
    v.extend_from_slice(&r.created_ms.to_be_bytes());
    v.extend_from_slice(&r.updated_ms.to_be_bytes());
    put_bytes(&mut v, "outbox id", r.id.as_bytes())?;
    put_bytes(&mut v, "outbox to", r.to.as_bytes())?;
    put_bytes(&mut v, "outbox error", r.error_code.as_bytes())?;
    put_bytes(&mut v, "outbox content", &r.content)?;
    put_bytes(&mut v, "outbox stanza", &r.stanza)?;
    Ok(v)
}

fn decode_outbox(b: &[u8]) -> Result<OutboxRow, StoreError> {
    let mut r = Reader::new(b, "outbox");
    r.version(OUTBOX_ROW_VERSION)?;
    let kind = r.u8()?;
    let status = OutboxStatus::from_byte(r.u8()?).ok_or(StoreError::Corrupt {
        table: "outbox",
        detail: "unknown status",
    })?;
    let created_ms = r.u64()?;
    let updated_ms = r.u64()?;
    let id = r.string()?;
    let to = r.string()?;
    let error_code = r.string()?;
    let content = r.bytes()?.to_vec();
    let stanza = r.bytes()?.to_vec();
    r.end()?;
    Ok(OutboxRow {
        id,
        to,
        kind,
        status,
        created_ms,
        updated_ms,
        error_code,
        content,
        stanza,
    })
}

fn encode_inbox(r: &InboxRow) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(32 + r.content.len());
    v.push(INBOX_ROW_VERSION);
    v.extend_from_slice(&r.t_secs.to_be_bytes());
    v.extend_from_slice(&r.received_ms.to_be_bytes());
    put_bytes(&mut v, "inbox id", r.id.as_bytes())?;
    put_bytes(&mut v, "inbox from", r.from.as_bytes())?;
    put_bytes(&mut v, "inbox content", &r.content)?;
    Ok(v)
}

/// The `idempotency` value: version, then the message id as length-prefixed UTF-8.
fn encode_idempotency(message_id: &str) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(5 + message_id.len());
    v.push(IDEMPOTENCY_ROW_VERSION);
    put_bytes(&mut v, "idempotency message id", message_id.as_bytes())?;
    Ok(v)
}

fn decode_idempotency(b: &[u8]) -> Result<String, StoreError> {
    let mut r = Reader::new(b, "idempotency");
    r.version(IDEMPOTENCY_ROW_VERSION)?;
    let id = r.string()?;
    r.end()?;
    Ok(id)
}

fn decode_pending(b: &[u8]) -> Result<PendingInbox, StoreError> {
    let mut r = Reader::new(b, "pending_inbox");
    r.version(PENDING_INBOX_ROW_VERSION)?;
    let attempts = r.u32()?;
    let next_ms = r.u64()?;
    let row = decode_inbox(r.bytes()?)?;
    r.end()?;
    Ok(PendingInbox {
        attempts,
        next_ms,
        row,
    })
}

fn decode_inbox(b: &[u8]) -> Result<InboxRow, StoreError> {
    let mut r = Reader::new(b, "inbox");
    r.version(INBOX_ROW_VERSION)?;
    let t_secs = r.u64()?;
    let received_ms = r.u64()?;
    let id = r.string()?;
    let from = r.string()?;
    let content = r.bytes()?.to_vec();
    r.end()?;
    Ok(InboxRow {
        id,
        from,
        t_secs,
        received_ms,
        content,
    })
}

fn be_u32(b: &[u8], table: &'static str) -> Result<u32, StoreError> {
    let a: [u8; 4] = b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        detail: "bad u32",
    })?;
    Ok(u32::from_be_bytes(a))
}

fn be_u64(b: &[u8], table: &'static str) -> Result<u64, StoreError> {
    let a: [u8; 8] = b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        detail: "bad u64",
    })?;
    Ok(u64::from_be_bytes(a))
}

/// The Signal engine's tables live in the daemon's file (docs/store.md); their rows commit in
/// the same transaction as the outbox or inbox row they belong to.
impl SignalStore for Txn {
    type Error = StoreError;

    fn get(&self, table: KeyTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SignalTables(&self.inner).get(table, key)
    }

    fn put(&self, table: KeyTable, key: &str, value: &[u8]) -> Result<(), StoreError> {
        SignalTables(&self.inner).put(table, key, value)
    }

    fn remove(&self, table: KeyTable, key: &str) -> Result<(), StoreError> {
        SignalTables(&self.inner).remove(table, key)
    }

    fn scan_prefix(
        &self,
        table: KeyTable,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        SignalTables(&self.inner).scan_prefix(table, prefix)
    }

    fn get_id(&self, table: IdTable, id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        SignalTables(&self.inner).get_id(table, id)
    }

    fn put_id(&self, table: IdTable, id: u32, value: &[u8]) -> Result<(), StoreError> {
        SignalTables(&self.inner).put_id(table, id, value)
    }

    fn remove_id(&self, table: IdTable, id: u32) -> Result<bool, StoreError> {
        SignalTables(&self.inner).remove_id(table, id)
    }

    fn count_ids(&self, table: IdTable) -> Result<u64, StoreError> {
        SignalTables(&self.inner).count_ids(table)
    }

    fn first_ids(&self, table: IdTable, limit: usize) -> Result<Vec<u32>, StoreError> {
        SignalTables(&self.inner).first_ids(table, limit)
    }

    fn counter(&self, name: &str) -> Result<Option<u32>, StoreError> {
        SignalTables(&self.inner).counter(name)
    }

    fn set_counter(&self, name: &str, value: u32) -> Result<(), StoreError> {
        SignalTables(&self.inner).set_counter(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_row(id: &str) -> OutboxRow {
        OutboxRow {
            id: id.to_string(),
            to: "15550100".into(),
            kind: 1,
            status: OutboxStatus::Queued,
            created_ms: 1,
            updated_ms: 2,
            error_code: String::new(),
            content: vec![1, 2, 3],
            stanza: b"<message/>".to_vec(),
        }
    }

    #[test]
    fn state_dir_is_0700_and_db_file_is_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let _s = Store::open(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE_NAME)), 0o600);
    }

    #[test]
    fn fresh_store_records_current_schema_version() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        Store::open(tmp.path())
            .unwrap()
            .force_schema_version(SCHEMA_VERSION + 1)
            .unwrap();
        let err = Store::open(tmp.path()).err().unwrap();
        assert!(matches!(err, StoreError::SchemaTooNew { found, supported }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION));
        assert!(err.to_string().contains("newer interopd"));
    }

    #[test]
    fn outbox_row_round_trips_and_is_found_by_id() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        let seq = txn.outbox_insert(&outbox_row("3EB0AA")).unwrap();
        txn.commit().unwrap();
        let txn = s.begin().unwrap();
        let (got_seq, row) = txn.outbox_by_id("3EB0AA").unwrap().unwrap();
        assert_eq!(got_seq, seq);
        assert_eq!(row, outbox_row("3EB0AA"));
    }

    #[test]
    fn outbox_scan_returns_rows_in_queue_order() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        for i in 0..5 {
            txn.outbox_insert(&outbox_row(&format!("id{i}"))).unwrap();
        }
        let rows = txn.outbox_scan(2, 10).unwrap();
        let ids: Vec<_> = rows.iter().map(|(_, r)| r.id.as_str()).collect();
        assert_eq!(ids, ["id2", "id3", "id4"]);
    }

    #[test]
    fn redelivered_inbound_is_not_stored_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let row = InboxRow {
            id: "X".into(),
            from: "1555".into(),
            t_secs: 9,
            received_ms: 10,
            content: vec![7],
        };
        let txn = s.begin().unwrap();
        assert_eq!(txn.inbox_insert("1555/X", &row).unwrap(), Some(1));
        assert_eq!(txn.inbox_insert("1555/X", &row).unwrap(), None);
        assert_eq!(txn.inbox_insert("1555/Y", &row).unwrap(), Some(2));
        assert_eq!(txn.inbox_after(0, 10).unwrap().len(), 2);
    }

    #[test]
    fn device_list_round_trips_and_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        let list = DeviceList {
            fetched_ms: 5,
            devices: vec![0, 1, 7],
        };
        txn.put_device_list("1555", &list).unwrap();
        assert_eq!(txn.device_list("1555").unwrap(), Some(list));
        let big = DeviceList {
            fetched_ms: 5,
            devices: vec![1; MAX_DEVICES_PER_USER + 1],
        };
        assert!(matches!(
            txn.put_device_list("1555", &big),
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[test]
    fn media_rows_scan_in_id_order_from_after_and_can_be_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        for b in [3u8, 1, 2] {
            txn.put_media(&[b; 16], &[b]).unwrap();
        }
        let all: Vec<u8> = txn
            .media_scan(None, 10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(all, vec![1, 2, 3]);
        let after: Vec<u8> = txn
            .media_scan(Some(&[1; 16]), 1)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(after, vec![2]);
        assert!(txn.remove_media(&[2; 16]).unwrap());
        assert!(!txn.remove_media(&[2; 16]).unwrap());
        assert_eq!(txn.media_scan(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_pending_message_enters_the_inbox_once_on_release() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        let row = InboxRow {
            id: "3EB0AA".into(),
            from: "15550100".into(),
            t_secs: 1,
            received_ms: 2,
            content: vec![1, 2, 3],
        };
        let p = PendingInbox {
            attempts: 0,
            next_ms: 5,
            row: row.clone(),
        };
        assert!(txn.pending_inbox_insert("k", &p).unwrap());
        // A redelivery while pending, or a plain insert, stores nothing.
        assert!(!txn.pending_inbox_insert("k", &p).unwrap());
        assert_eq!(txn.inbox_insert("k", &row).unwrap(), None);
        assert_eq!(txn.inbox_after(0, 10).unwrap().len(), 0);
        let again = PendingInbox { attempts: 3, ..p };
        txn.pending_inbox_put("k", &again).unwrap();
        assert_eq!(
            txn.pending_inbox(10).unwrap(),
            vec![("k".to_owned(), again)]
        );
        let cursor = txn.pending_inbox_release("k").unwrap().unwrap();
        assert_eq!(txn.inbox_get(cursor).unwrap(), Some(row.clone()));
        assert_eq!(txn.pending_inbox_release("k").unwrap(), None);
        assert_eq!(txn.pending_inbox_count().unwrap(), 0);
        assert_eq!(txn.inbox_insert("k", &row).unwrap(), None);
    }

    #[test]
    fn corrupt_row_is_a_typed_error_not_a_panic() {
        for bad in [
            &b""[..],
            &[1u8][..],
            &[9u8, 0, 0][..],
            &[1u8, 1, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(matches!(
                decode_outbox(bad),
                Err(StoreError::Corrupt { .. })
            ));
            assert!(matches!(decode_inbox(bad), Err(StoreError::Corrupt { .. })));
        }
    }

    #[test]
    fn idempotency_keys_round_trip_to_message_ids_and_garbage_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        txn.put_idempotency("door-1", "3EB0000000000000000001")
            .unwrap();
        assert_eq!(
            txn.idempotency("door-1").unwrap().as_deref(),
            Some("3EB0000000000000000001")
        );
        assert_eq!(txn.idempotency("door-2").unwrap(), None);
        for bad in [&b""[..], &[2u8, 0, 0, 0, 0][..], &[1u8, 0, 0, 0, 1][..]] {
            txn.inner
                .open_table(IDEMPOTENCY)
                .unwrap()
                .insert("bad", bad)
                .unwrap();
            assert!(matches!(
                txn.idempotency("bad"),
                Err(StoreError::Corrupt {
                    table: "idempotency",
                    ..
                })
            ));
        }
    }

    #[test]
    fn removing_an_inbox_row_removes_its_read_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let txn = s.begin().unwrap();
        let row = InboxRow {
            id: "X".into(),
            from: "1555".into(),
            t_secs: 9,
            received_ms: 10,
            content: vec![7],
        };
        let a = txn.inbox_insert("1555/X", &row).unwrap().unwrap();
        let b = txn.inbox_insert("1555/Y", &row).unwrap().unwrap();
        txn.put_read_mark(a, b"a").unwrap();
        txn.put_read_mark(b, b"b").unwrap();
        txn.inbox_remove(a, "1555/X").unwrap();
        assert_eq!(txn.read_mark(a).unwrap(), None);
        assert_eq!(txn.read_mark(b).unwrap().as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn dropped_transaction_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        {
            let txn = s.begin().unwrap();
            txn.outbox_insert(&outbox_row("gone")).unwrap();
        }
        let txn = s.begin().unwrap();
        assert!(txn.outbox_by_id("gone").unwrap().is_none());
        assert!(txn.outbox_scan(0, 10).unwrap().is_empty());
    }

    #[test]
    fn integers_on_disk_are_big_endian() {
        let row = outbox_row("a");
        let bytes = encode_outbox(&row).unwrap();
        assert_eq!(&bytes[3..11], &1u64.to_be_bytes());
        assert_eq!(&bytes[11..19], &2u64.to_be_bytes());
    }
}
