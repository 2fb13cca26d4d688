//! The on-disk store: one redb file, `<state>/interopd.redb`, holding everything that must
//! survive a power cut (DESIGN.md section 6). This module owns the table definitions, the schema
//! version check and the byte layout of every key and value. This file holds the tables, the
//! open and the transaction; each table family has a file of its own (`outbox.rs`, `inbox.rs`,
//! `jobs.rs`, `log.rs`) and the row codecs are in `codec.rs`.
//! It knows nothing of Signal, XML or HTTP: callers open a [`Txn`], read and write typed rows,
//! and commit. One write transaction can carry a Signal session update together with an outbox
//! or inbox row, which is what makes "decrypt, commit, then ack" and "encrypt, commit, then
//! write" possible. Dropping a [`Txn`] without [`Txn::commit`] discards all of it.
//!
//! Format rules (docs/store.md has every table byte for byte):
//! - every multi-byte integer is fixed-width big-endian (`[u8; N]` keys sort numerically);
//! - no `usize` in the format, so a store moves between 64-bit and 32-bit ARM unchanged;
//! - every value that is a struct starts with a one-byte row version.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub(crate) use crate::row::Reader;

mod codec;
mod groups;
mod health;
mod inbox;
mod jobs;
mod log;
mod notes;
mod outbox;
#[cfg(test)]
pub(crate) mod powercut;
pub mod snapshot;

use crate::signal_store::{IdTable, KeyTable, SignalStore};
use codec::*;
pub use groups::{
    DeviceReceipt, GROUP_RECEIPT_ROW_VERSION, GROUP_ROW_VERSION, GroupMember, GroupRow,
    MAX_GROUP_DEVICES, MAX_GROUP_JID_BYTES,
};
pub use health::{Failure, STORE_GIVE_UP_MS, STORE_RECOVERY_FREE_BYTES, STORE_REOPEN_INTERVAL_MS};
use interop_io::signal_tables::SignalTables;
pub use interop_io::state_dir::{
    StoreError, ensure_state_dir, open_database, open_database_shared, open_private_file,
};
pub use notes::{MAX_CORRELATION_BYTES, MessageNote, NOTE_ROW_VERSION};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The schema this build writes. A store with a larger version is refused; a smaller one is
/// migrated at open (docs/store.md, "Schema versions"). Version 2: `local_identity` rows
/// store the public key (row version 2). Version 3: table `message_notes` (correlations,
/// edits and deletes for everyone). Version 4: tables `groups`, `group_receipts` and
/// `sender_keys`, and inbox rows from a group (row version 2).
pub const SCHEMA_VERSION: u32 = 4;
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
    LOCAL_IDENTITY, META, PREKEYS, REMOTE_IDENTITIES, SENDER_KEYS, SESSIONS, SIGNED_PREKEYS,
};
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const GROUP_RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("group_receipts");
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
/// Notes on messages (correlation, latest text, edited/revoked), by message key.
const MESSAGE_NOTES: TableDefinition<&str, &[u8]> = TableDefinition::new("message_notes");
/// Row version of a `pending_inbox` value.
pub const PENDING_INBOX_ROW_VERSION: u8 = 1;
/// Row version of an `idempotency` value.
pub const IDEMPOTENCY_ROW_VERSION: u8 = 1;

const META_SCHEMA_VERSION: &str = "schema_version";

/// The open store. Cheap to share by reference; all access goes through transactions.
pub struct Store {
    /// `None` only inside [`Store::recover`], between closing and reopening the file.
    db: RefCell<Option<Database>>,
    path: PathBuf,
    health: Rc<health::Health>,
}

impl Store {
    /// Opens the store in `state_dir`, creating the directory (0700) and file (0600) on first
    /// use, creating every table, and checking the schema version.
    ///
    /// Every open verifies the checksum of every committed page first (redb's integrity
    /// check), because redb may panic on a page altered outside it: a damaged file is
    /// [`StoreError::CorruptFile`], never a crash loop. It reads the whole file once
    /// (docs/store.md has what that costs).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE_NAME);
        let db = open_database_shared(&path, STORE_CACHE_BYTES)?;
        let store = Store::with_database(db, path);
        store.init_schema()?;
        Ok(store)
    }

    /// A store held in memory only (redb's `InMemoryBackend`), for core tests: the same
    /// tables and schema check as [`Store::open`], no directory, gone when dropped.
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let store = Store::with_database(db, PathBuf::from(":memory:"));
        store.init_schema()?;
        Ok(store)
    }

    fn with_database(db: Database, path: PathBuf) -> Store {
        Store {
            db: RefCell::new(Some(db)),
            path,
            health: Rc::default(),
        }
    }

    /// Why and since when the store is failed (docs/store.md, "A full disk"), if it is.
    pub fn failure(&self) -> Option<Failure> {
        self.health.failure()
    }

    /// Times the store failed, and times it was reopened after a failure, since start.
    pub fn failure_counts(&self) -> (u64, u64) {
        self.health.counts()
    }

    /// Reopens a failed store: proves free space beside the file, closes the database, opens
    /// it again (with the integrity check of every open) and checks the schema. `Ok(true)`
    /// once the store works again, `Ok(false)` if it was not failed; on `Err` it stays failed
    /// and the caller tries again later. Call it with no [`Txn`] open.
    pub fn recover(&self) -> Result<bool, StoreError> {
        if self.health.failure().is_none() {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        health::probe_free_space(dir).map_err(|e| self.health.note(e))?;
        // redb holds a lock on the file until the database is dropped.
        drop(self.db.borrow_mut().take());
        let db =
            open_database_shared(&self.path, STORE_CACHE_BYTES).map_err(|e| self.health.note(e))?;
        *self.db.borrow_mut() = Some(db);
        // A commit proves that writes work again; its failure continues the old one.
        let fresh = Rc::new(health::Health::default());
        let checked = self.begin_with(&fresh).and_then(|txn| {
            txn.inner.open_table(META)?;
            txn.commit()
        });
        checked
            .and_then(|()| self.schema_version_unchecked())
            .map_err(|e| self.health.note(e))?;
        self.health.clear();
        Ok(true)
    }

    /// A store on a test's own redb backend (such as [`powercut::CutDisk`]), opened as
    /// [`Store::open`] opens its file: the integrity check first, then the schema.
    #[cfg(test)]
    pub(crate) fn with_backend(backend: impl redb::StorageBackend) -> Result<Store, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(STORE_CACHE_BYTES);
        builder.set_check_integrity_on_open(true);
        let store = Store::with_database(
            builder.create_with_backend(backend)?,
            PathBuf::from(":backend:"),
        );
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
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => {
                    // Migrations, oldest first, in this transaction: a crash keeps the old
                    // version whole.
                    if v < 2 {
                        // Version 2: the local identity row stores its public key.
                        drop(meta);
                        crate::signal::upgrade_identity_record(&txn).map_err(signal_store_error)?;
                        meta = txn.inner.open_table(META)?;
                    }
                    // Version 3 adds `message_notes`, and version 4 `groups`,
                    // `group_receipts` and `sender_keys`, created empty below; no row changes
                    // (an inbox row from a group is a new row version, never a rewrite).
                    meta.insert(META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes()[..])?;
                    ::log::info!("store: migrated schema version {v} to {SCHEMA_VERSION}");
                }
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
        txn.inner.open_table(PENDING_INBOX)?;
        txn.inner.open_table(MESSAGE_NOTES)?;
        txn.inner.open_table(GROUPS)?;
        txn.inner.open_table(GROUP_RECEIPTS)?;
        txn.inner.open_table(SENDER_KEYS)?;
        txn.commit()
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        if let Some(f) = self.health.failure() {
            return Err(f.error());
        }
        self.schema_version_unchecked()
            .map_err(|e| self.health.note(e))
    }

    fn schema_version_unchecked(&self) -> Result<u32, StoreError> {
        let db = self.db.borrow();
        let db = db.as_ref().ok_or_else(closed)?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta.get(META_SCHEMA_VERSION)?.ok_or(StoreError::Corrupt {
            table: "meta",
            detail: "schema_version missing",
        })?;
        be_u32(v.value(), "meta")
    }

    /// Starts a write transaction. Only one is open at a time (redb serialises writers), which
    /// suits our single-threaded shell: batch a loop turn's work into one [`Txn`]. While the
    /// store is failed ([`Store::failure`]), answers that failure without touching the file.
    pub fn begin(&self) -> Result<Txn, StoreError> {
        if let Some(f) = self.health.failure() {
            return Err(f.error());
        }
        let health = Rc::clone(&self.health);
        self.begin_with(&health)
    }

    fn begin_with(&self, health: &Rc<health::Health>) -> Result<Txn, StoreError> {
        let db = self.db.borrow();
        let db = db.as_ref().ok_or_else(closed)?;
        match db.begin_write() {
            Ok(inner) => Ok(Txn {
                inner,
                health: Rc::clone(health),
            }),
            Err(e) => Err(health.note(e.into())),
        }
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
    /// Where a failed commit is recorded.
    health: Rc<health::Health>,
}

/// A Signal engine error from a migration step, as the store error it is.
fn signal_store_error(e: crate::signal::SignalError) -> StoreError {
    match e {
        crate::signal::SignalError::Store(e) => e,
        other => StoreError::Database {
            detail: other.to_string(),
        },
    }
}

/// The error while the database is closed inside [`Store::recover`] (never seen outside it).
fn closed() -> StoreError {
    StoreError::Failed {
        detail: "the database is being reopened".into(),
        disk_full: false,
    }
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
    /// The group id (`120363…`) of a group message; empty for a 1:1 message.
    pub group: String,
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
        self.inner.commit().map_err(|e| self.health.note(e.into()))
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
            group: String::new(),
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
            group: String::new(),
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
            group: String::new(),
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

#[cfg(test)]
mod damaged_file_tests {
    use super::*;

    /// A store with 400 commits of events and idempotency keys, closed; its file's bytes.
    fn filled() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..400u32 {
                let txn = store.begin().unwrap();
                txn.append_event(&[(i % 251) as u8; 300]).unwrap();
                txn.put_idempotency(&format!("key-{i}"), &format!("3EB0{i:08}"))
                    .unwrap();
                txn.commit().unwrap();
            }
        }
        let bytes = std::fs::read(dir.path().join(DB_FILE_NAME)).unwrap();
        (dir, bytes)
    }

    /// Opens `bytes` as the store and reads every row; a panic fails the test.
    fn open_and_read(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        std::fs::write(dir.join(DB_FILE_NAME), bytes).unwrap();
        let store = Store::open(dir)?;
        let txn = store.begin()?;
        txn.events_after(0, 10_000)?;
        for i in 0..400 {
            txn.idempotency(&format!("key-{i}"))?;
        }
        Ok(())
    }

    #[test]
    fn four_hundred_flipped_bytes_in_the_middle_are_a_damaged_file_not_a_panic() {
        let (dir, mut bytes) = filled();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 400] {
            *b ^= 0x5a;
        }
        match open_and_read(dir.path(), &bytes) {
            Err(StoreError::CorruptFile { path, .. }) => {
                assert_eq!(path, dir.path().join(DB_FILE_NAME));
                let text = StoreError::CorruptFile {
                    path,
                    detail: String::new(),
                }
                .to_string();
                assert!(text.contains("interopd.redb is damaged"), "{text}");
                assert!(text.contains("move the file away"), "{text}");
            }
            other => panic!("expected CorruptFile, got {other:?}"),
        }
    }

    #[test]
    fn damage_anywhere_is_an_error_or_harmless_never_a_panic() {
        // Without the integrity check at open, 15 of these 40 offsets panicked in redb.
        let (dir, clean) = filled();
        let len = clean.len();
        let mut refused = 0;
        for i in 0..40usize {
            let start = (i * len / 40).min(len - 400);
            let mut bytes = clean.clone();
            for b in &mut bytes[start..start + 400] {
                *b ^= 0x5a;
            }
            match open_and_read(dir.path(), &bytes) {
                Ok(()) => {}
                Err(StoreError::CorruptFile { .. }) => refused += 1,
                // Damage in a row's bytes that passes the page checks is a row error.
                Err(StoreError::Corrupt { .. }) => refused += 1,
                Err(e) => panic!("offset {start}: {e:?}"),
            }
        }
        assert!(refused >= 20, "only {refused} of 40 damaged files refused");
    }

    #[test]
    fn a_truncated_file_is_a_damaged_file() {
        let (dir, bytes) = filled();
        let r = open_and_read(dir.path(), &bytes[..bytes.len() / 2]);
        assert!(matches!(r, Err(StoreError::CorruptFile { .. })), "{r:?}");
    }
}
