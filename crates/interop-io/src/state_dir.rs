//! A state directory and the database error both shells share: the daemon's store and the
//! hub's keep their redb files in a private directory (0700) as private files (0600), and
//! report failures as one [`StoreError`], whose variants say who is at fault.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use interop_proto::row::RowError;

/// What went wrong in the store. Every variant ends the operation; the shell reports it
/// (API 503, daemon log at `error`) and, after an I/O error, reopens rather than retrying blind.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Environment: the state directory or file could not be created or opened.
    Io { path: PathBuf, source: io::Error },
    /// Environment: the file was written by a newer interopd. Upgrade, or restore a backup.
    SchemaTooNew { found: u32, supported: u32 },
    /// Environment (corruption) or bug: a stored row does not parse.
    Corrupt {
        table: &'static str,
        detail: &'static str,
    },
    /// Environment: redb reported an error other than an I/O failure.
    Database { detail: String },
    /// Environment: a read or write of the database file failed (`disk_full`: the file
    /// system is full, ENOSPC or EDQUOT), and redb refuses every later call until the file is
    /// opened again. The daemon's store reopens it by itself once space is free.
    Failed { detail: String, disk_full: bool },
    /// Environment: the database file at `path` is damaged (a page fails its checksum, or
    /// the file is shorter than its own header says). Found at open; the process exits 1.
    CorruptFile { path: PathBuf, detail: String },
    /// Caller bug or outside data too large for the format (a field over its bound).
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "store: {}: {source}", path.display()),
            Self::SchemaTooNew { found, supported } => write!(
                f,
                "store: schema version {found} was written by a newer interopd; this build reads up to {supported}"
            ),
            Self::Corrupt { table, detail } => write!(f, "store: corrupt row in {table}: {detail}"),
            Self::Database { detail } => write!(f, "store: {detail}"),
            Self::Failed {
                detail,
                disk_full: true,
            } => write!(
                f,
                "store: the disk is full ({detail}); free space on the state directory's file system"
            ),
            Self::Failed { detail, .. } => write!(f, "store: I/O error: {detail}"),
            Self::CorruptFile { path, detail } => write!(
                f,
                "store: {} is damaged ({detail}). Restore a backup taken before the damage (`interopd restore --in FILE --state DIR --force`, docs/backup.md), or stop the service and move the file away to start again (a new identity: contacts see a safety-number change, queued messages are lost)",
                path.display()
            ),
            Self::TooLarge { what, len, max } => {
                write!(f, "store: {what} is {len} bytes, over the bound of {max}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// A redb error as ours: an I/O failure (after which redb refuses every call until the file
/// is opened again) is [`StoreError::Failed`], the rest [`StoreError::Database`].
fn from_storage(e: &redb::StorageError, detail: String) -> StoreError {
    match e {
        redb::StorageError::Io(io) => StoreError::Failed {
            detail,
            disk_full: is_disk_full(io),
        },
        redb::StorageError::PreviousIo => StoreError::Failed {
            detail,
            disk_full: false,
        },
        _ => StoreError::Database { detail },
    }
}

/// Whether an I/O error says the file system is full: ENOSPC (28) or EDQUOT (122).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122)) || e.kind() == io::ErrorKind::StorageFull
}

macro_rules! from_redb {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(e: redb::$t) -> Self {
                let detail = e.to_string();
                match e {
                    redb::$t::Storage(s) => from_storage(&s, detail),
                    _ => StoreError::Database { detail },
                }
            }
        }
    )*};
}
from_redb!(DatabaseError, TransactionError, TableError, CommitError);

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        let detail = e.to_string();
        from_storage(&e, detail)
    }
}

/// Opens (creating with mode 0600) the redb file at `path` with a page cache of
/// `cache_bytes`, verifying the checksum of every committed page first: redb may panic on a
/// page altered outside it, so a damaged file is [`StoreError::CorruptFile`] instead. The
/// check reads the whole file once.
pub fn open_database(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    open_database_in(path, cache_bytes, redb::ConcurrencyMode::ExclusiveWriter)
}

/// [`open_database`] in redb's `SingleWriter` mode: this process is the only writer, and any
/// number of other processes may open the file read-only meanwhile and read consistent
/// snapshots of its commits (the daemon's store, which `interopd backup` reads while the
/// daemon runs). A second writer is still refused.
pub fn open_database_shared(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    open_database_in(path, cache_bytes, redb::ConcurrencyMode::SingleWriter)
}

fn open_database_in(
    path: &Path,
    cache_bytes: usize,
    mode: redb::ConcurrencyMode,
) -> Result<redb::Database, StoreError> {
    let file = open_private_file(path)?;
    let mut builder = redb::Database::builder();
    builder.set_cache_size(cache_bytes);
    builder.set_concurrency_mode(mode);
    builder.set_check_integrity_on_open(true);
    let backend = redb::backends::FileBackend::new(file)?;
    builder
        .create_with_backend(backend)
        .map_err(|e| match is_damaged_file(&e) {
            Some(detail) => StoreError::CorruptFile {
                path: path.to_path_buf(),
                detail,
            },
            None => e.into(),
        })
}

/// Whether a redb error from opening a file means the file itself is damaged: a failed
/// checksum, a header that is not redb's, or a read past its end (a file shorter than its
/// header says); with what redb said.
fn is_damaged_file(e: &redb::DatabaseError) -> Option<String> {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => Some(detail.clone()),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            Some(format!("shorter than its header says: {io}"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            Some(io.to_string())
        }
        _ => None,
    }
}

/// Creates `dir` (and parents) with mode 0700, and tightens an existing one to 0700.
pub fn ensure_state_dir(dir: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)
}

/// Opens (creating with mode 0600 if absent) a file inside the state directory.
pub fn open_private_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(file)
}

impl From<RowError> for StoreError {
    fn from(e: RowError) -> Self {
        StoreError::Corrupt {
            table: e.table,
            detail: e.detail,
        }
    }
}

/// Writes `bytes` to `path` whole, or leaves the old file: a temporary file made with `mode`,
/// fsync, rename over `path`, then fsync of the directory. The one atomic file writer of
/// both shells (CA and keys, provider keys, Noise keys, media host identity).
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, io::Error)> {
    use std::io::Write as _;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| (path, e)
    };
    // A leftover from a crash may have another mode; the mode applies only on creation.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(bytes).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(at(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at(dir))?;
    }
    Ok(())
}
