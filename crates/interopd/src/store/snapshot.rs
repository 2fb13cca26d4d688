//! A consistent copy of the whole store, for `interopd backup` (docs/backup.md).
//!
//! The live file is opened read-only beside the running daemon ([`open_shared`]): the daemon
//! opens its store in redb's `SingleWriter` mode, where one process writes and any number of
//! read-only processes follow its commits, each through byte-range locks on the file. One read
//! transaction then sees one commit, every table as it was then, however long the copy takes
//! and whatever the daemon commits meanwhile. [`copy_into`] writes every table of that
//! transaction into a fresh redb file, row by row. This file owns the list of tables a snapshot
//! carries; it knows no archive format, no encryption and no other file.

use std::path::Path;

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata as _,
    TableDefinition, TableHandle, Value,
};

use super::{
    DEDUPE, DEVICE_LISTS, EVENTS, GROUP_RECEIPTS, GROUPS, IDEMPOTENCY, INBOX, LOCAL_IDENTITY,
    MEDIA, MESSAGE_NOTES, META, META_SCHEMA_VERSION, OUTBOX, OUTBOX_BY_ID, PENDING_INBOX, PREKEYS,
    READ_MARKS, REMOTE_IDENTITIES, SENDER_KEYS, SESSIONS, SIGNED_PREKEYS, STORE_CACHE_BYTES,
    StoreError, WEBHOOK_DEAD, WEBHOOK_JOBS, be_u32,
};

/// Rows written per transaction of the copy: the fresh file's dirty pages stay in memory only
/// until their commit, so this bounds the copy's memory whatever the store's size.
pub const SNAPSHOT_BATCH_ROWS: usize = 1024;

/// The names of every table a snapshot carries, in the order it copies them. A live store with
/// a table not listed here is refused ([`StoreError::Database`]), so that a table added
/// without adding it here cannot silently be left out of backups.
pub const SNAPSHOT_TABLES: [&str; 22] = [
    "meta",
    "local_identity",
    "prekeys",
    "signed_prekeys",
    "sessions",
    "remote_identities",
    "device_lists",
    "outbox",
    "outbox_by_id",
    "inbox",
    "dedupe",
    "pending_inbox",
    "media",
    "webhook_jobs",
    "webhook_dead",
    "events",
    "idempotency",
    "read_marks",
    "message_notes",
    "groups",
    "group_receipts",
    "sender_keys",
];

/// Opens the store file at `path` read-only, beside a daemon that may have it open for
/// writing. A file whose last writer stopped without a clean close (a crash, a power cut) is
/// refused by redb here; the caller may then open it as [`super::Store::open`] does, which
/// repairs it, since no daemon can be running on it.
pub fn open_shared(path: &Path) -> Result<redb::ReadOnlyDatabase, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(STORE_CACHE_BYTES);
    builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    builder.open_read_only(path).map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(source))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
        other => other.into(),
    })
}

/// What [`copy_into`] copied: the schema version and the rows of each table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCounts {
    pub schema_version: u32,
    /// `(table, rows)` in [`SNAPSHOT_TABLES`] order.
    pub rows: Vec<(&'static str, u64)>,
}

/// Copies every table that `src` sees into `dst` (a fresh, empty database), committing every
/// [`SNAPSHOT_BATCH_ROWS`] rows. Refuses a source with a table this build does not know.
pub fn copy_into(src: &ReadTransaction, dst: &Database) -> Result<SnapshotCounts, StoreError> {
    for table in src.list_tables()? {
        if !SNAPSHOT_TABLES.contains(&table.name()) {
            return Err(StoreError::Database {
                detail: format!(
                    "the store has a table this build does not know ({:?}); back it up with the interopd that wrote it",
                    table.name()
                ),
            });
        }
    }
    let schema_version = {
        let meta = src.open_table(META)?;
        let v = meta.get(META_SCHEMA_VERSION)?.ok_or(StoreError::Corrupt {
            table: "meta",
            detail: "schema_version missing",
        })?;
        be_u32(v.value(), "meta")?
    };
    let rows = vec![
        ("meta", copy_table(src, dst, META)?),
        ("local_identity", copy_table(src, dst, LOCAL_IDENTITY)?),
        ("prekeys", copy_table(src, dst, PREKEYS)?),
        ("signed_prekeys", copy_table(src, dst, SIGNED_PREKEYS)?),
        ("sessions", copy_table(src, dst, SESSIONS)?),
        (
            "remote_identities",
            copy_table(src, dst, REMOTE_IDENTITIES)?,
        ),
        ("device_lists", copy_table(src, dst, DEVICE_LISTS)?),
        ("outbox", copy_table(src, dst, OUTBOX)?),
        ("outbox_by_id", copy_table(src, dst, OUTBOX_BY_ID)?),
        ("inbox", copy_table(src, dst, INBOX)?),
        ("dedupe", copy_table(src, dst, DEDUPE)?),
        ("pending_inbox", copy_table(src, dst, PENDING_INBOX)?),
        ("media", copy_table(src, dst, MEDIA)?),
        ("webhook_jobs", copy_table(src, dst, WEBHOOK_JOBS)?),
        ("webhook_dead", copy_table(src, dst, WEBHOOK_DEAD)?),
        ("events", copy_table(src, dst, EVENTS)?),
        ("idempotency", copy_table(src, dst, IDEMPOTENCY)?),
        ("read_marks", copy_table(src, dst, READ_MARKS)?),
        ("message_notes", copy_table(src, dst, MESSAGE_NOTES)?),
        ("groups", copy_table(src, dst, GROUPS)?),
        ("group_receipts", copy_table(src, dst, GROUP_RECEIPTS)?),
        ("sender_keys", copy_table(src, dst, SENDER_KEYS)?),
    ];
    Ok(SnapshotCounts {
        schema_version,
        rows,
    })
}

/// Every `media` row the transaction sees, as `(id, row bytes)`, at most `max_rows` of them
/// (more is [`StoreError::TooLarge`]).
pub fn media_rows(
    src: &ReadTransaction,
    max_rows: u64,
) -> Result<Vec<super::MediaEntry>, StoreError> {
    let table = match src.open_table(MEDIA) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if out.len() as u64 >= max_rows {
            return Err(StoreError::TooLarge {
                what: "media table (rows)",
                len: table.len()?,
                max: max_rows,
            });
        }
        out.push((*k.value(), v.value().to_vec()));
    }
    Ok(out)
}

/// Opens a fresh database file at `path` (mode 0600, created; it must not hold a database
/// yet) for [`copy_into`].
pub fn create_fresh(path: &Path) -> Result<Database, StoreError> {
    let file = super::open_private_file(path)?;
    let mut builder = Database::builder();
    builder.set_cache_size(STORE_CACHE_BYTES);
    let backend = redb::backends::FileBackend::new(file)?;
    Ok(builder.create_with_backend(backend)?)
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let table = match src.open_table(def) {
        Ok(t) => Some(t),
        // A table the daemon never opened is an empty one; Store::open creates it on restore.
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut rows = match &table {
        Some(t) => Some(t.iter()?),
        None => None,
    };
    let mut copied = 0u64;
    loop {
        let txn = dst.begin_write()?;
        let mut done = true;
        {
            let mut out = txn.open_table(def)?;
            if let Some(rows) = rows.as_mut() {
                for _ in 0..SNAPSHOT_BATCH_ROWS {
                    let Some(row) = rows.next() else {
                        done = true;
                        break;
                    };
                    done = false;
                    let (k, v) = row?;
                    out.insert(k.value(), v.value())?;
                    copied += 1;
                }
            }
        }
        txn.commit()?;
        if done || rows.is_none() {
            return Ok(copied);
        }
    }
}

/// The read transaction of an open read-only database, as a store error.
pub fn begin_read(db: &impl ReadableDatabase) -> Result<ReadTransaction, StoreError> {
    Ok(db.begin_read()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DB_FILE_NAME, Store};

    fn put_meta(store: &Store, key: &str, value: &[u8]) {
        let txn = store.begin().unwrap();
        txn.inner
            .open_table(META)
            .unwrap()
            .insert(key, value)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_reader_beside_the_open_store_sees_one_commit_while_the_store_writes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_meta(&store, "probe", b"old");
        let reader = open_shared(&dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = begin_read(&reader).unwrap();
        put_meta(&store, "probe", b"new");
        let seen = |t: &ReadTransaction| {
            t.open_table(META)
                .unwrap()
                .get("probe")
                .unwrap()
                .map(|v| v.value().to_vec())
        };
        assert_eq!(seen(&txn).as_deref(), Some(&b"old"[..]));
        assert_eq!(
            seen(&begin_read(&reader).unwrap()).as_deref(),
            Some(&b"new"[..])
        );

        let copy = tempfile::tempdir().unwrap();
        let dst = create_fresh(&copy.path().join(DB_FILE_NAME)).unwrap();
        let counts = copy_into(&txn, &dst).unwrap();
        assert_eq!(counts.schema_version, crate::store::SCHEMA_VERSION);
        assert_eq!(counts.rows.len(), SNAPSHOT_TABLES.len());
        drop(dst);
        // The copy opens as a store, with the value of the snapshot's commit.
        let restored = Store::open(copy.path()).unwrap();
        let t = restored.begin().unwrap();
        let v = t
            .inner
            .open_table(META)
            .unwrap()
            .get("probe")
            .unwrap()
            .map(|v| v.value().to_vec());
        assert_eq!(v.as_deref(), Some(&b"old"[..]));
    }

    #[test]
    fn a_second_writer_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(Store::open(dir.path()).is_err());
    }

    #[test]
    fn the_snapshot_lists_exactly_the_tables_the_store_creates() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        let reader = open_shared(&dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = begin_read(&reader).unwrap();
        let mut made: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        made.sort();
        let mut listed: Vec<String> = SNAPSHOT_TABLES.iter().map(|t| (*t).to_owned()).collect();
        listed.sort();
        assert_eq!(made, listed);
    }

    #[test]
    fn more_rows_than_one_batch_are_all_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let txn = store.begin().unwrap();
        {
            let mut t = txn.inner.open_table(EVENTS).unwrap();
            for i in 0..(SNAPSHOT_BATCH_ROWS as u64 * 2 + 3) {
                t.insert(&i.to_be_bytes(), &b"e"[..]).unwrap();
            }
        }
        txn.commit().unwrap();
        let reader = open_shared(&dir.path().join(DB_FILE_NAME)).unwrap();
        let src = begin_read(&reader).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let dst = create_fresh(&copy.path().join(DB_FILE_NAME)).unwrap();
        let counts = copy_into(&src, &dst).unwrap();
        let events = counts.rows.iter().find(|(t, _)| *t == "events").unwrap().1;
        assert_eq!(events, SNAPSHOT_BATCH_ROWS as u64 * 2 + 3);
    }
}
