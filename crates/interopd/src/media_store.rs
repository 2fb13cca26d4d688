//! Media blobs on disk and their rows in the store's `media` table (DESIGN.md section 5).
//!
//! This file owns the directory `<state>/media/` and everything in it, the byte layout of a
//! `media` row ([`MediaRow`], docs/media.md), the disk quota and the garbage collection of
//! expired and orphaned blobs. It does not own HTTP (the media host and the API serve what
//! [`MediaStore::open_file`] hands them), cryptography (blobs arrive already encrypted or
//! decrypted), or the other tables: a caller commits a row with [`put_row`] in its own
//! transaction, next to its outbox or inbox row. It is shell code: it reads and writes files
//! and draws randomness for temporary names from the caller's generator; time comes in as
//! `now_ms`.
//!
//! Layout, every directory mode 0700 and every file mode 0600:
//!
//! ```text
//! <state>/media/tmp/<random hex>   uploads and downloads in progress (TempBlob)
//! <state>/media/out/<id hex>       Outgoing: blobs (ciphertext) served by the media host
//! <state>/media/in/<id hex>        Incoming: received media, verified and decrypted
//! ```
//!
//! A blob's life: [`MediaStore::create_temp`] → write → [`MediaStore::persist`] (fsync the
//! file, rename it into `out/` or `in/`, fsync the directory) → the caller commits its row →
//! served until `expires_ms` → removed by the media host on first request after expiry or by
//! [`MediaStore::sweep`].
//!
//! Crash rules: a file in `tmp/` is never referenced, so [`MediaStore::open`] empties `tmp/`.
//! A crash between `persist` and the caller's commit leaves a file without a row; `sweep`
//! deletes such a file once it is older than [`MEDIA_ORPHAN_GRACE_MS`] (the grace keeps a
//! sweep from racing a persist whose commit is still to come). A file whose row exists and
//! has not expired is never deleted.

use std::cell::Cell;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rand::{CryptoRng, Rng};

use crate::store::{Reader, Store, StoreError, Txn};

/// Directory under the state directory that holds every media file.
pub const MEDIA_DIR_NAME: &str = "media";
/// Subdirectory of [`MEDIA_DIR_NAME`] for files being written.
pub const MEDIA_TMP_DIR_NAME: &str = "tmp";
/// Subdirectory of [`MEDIA_DIR_NAME`] for Outgoing blobs.
pub const MEDIA_OUT_DIR_NAME: &str = "out";
/// Subdirectory of [`MEDIA_DIR_NAME`] for Incoming plaintexts.
pub const MEDIA_IN_DIR_NAME: &str = "in";
/// Bytes in a media id (128 random bits for Outgoing ids, DESIGN.md section 5).
pub const MEDIA_ID_BYTES: usize = 16;
/// The first byte of every `media` row this build writes.
pub const MEDIA_ROW_VERSION: u8 = 1;
/// Longest mimetype stored in a row, in bytes.
pub const MAX_MEDIA_MIMETYPE_BYTES: usize = 255;
/// Longest message id stored in a row, in bytes.
pub const MAX_MEDIA_MESSAGE_ID_BYTES: usize = 256;
/// How old a file without a row must be before [`MediaStore::sweep`] deletes it, in
/// milliseconds (by its modification time).
pub const MEDIA_ORPHAN_GRACE_MS: u64 = 10 * 60 * 1000;
/// Rows or files [`MediaStore::sweep`] handles per store transaction.
pub const MEDIA_SWEEP_BATCH: usize = 256;

const TABLE: &str = "media";
const DIRECTION_OUTGOING: u8 = 0;
const DIRECTION_INCOMING: u8 = 1;

/// A media id: the key of a `media` row and the name of its file. For Outgoing blobs it is
/// 128 random bits, the unguessable part of the hosting URL.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MediaId(pub [u8; MEDIA_ID_BYTES]);

impl MediaId {
    /// A fresh random id.
    pub fn random<R: Rng + CryptoRng>(rng: &mut R) -> MediaId {
        let mut id = [0u8; MEDIA_ID_BYTES];
        rng.fill_bytes(&mut id);
        MediaId(id)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses exactly 32 lowercase hex digits (the form [`MediaId::to_hex`] writes, so one
    /// blob has one URL).
    pub fn parse_hex(s: &str) -> Option<MediaId> {
        let digits = s.as_bytes();
        if digits.len() != 2 * MEDIA_ID_BYTES {
            return None;
        }
        let mut id = [0u8; MEDIA_ID_BYTES];
        for (out, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = lower_hex_value(*pair.first()?)?;
            let lo = lower_hex_value(*pair.get(1)?)?;
            *out = (hi << 4) | lo;
        }
        Some(MediaId(id))
    }
}

impl std::fmt::Display for MediaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Which way a media file travels; it decides the directory and what the file holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Direction {
    /// A blob we host for a recipient: ciphertext, in `<state>/media/out/`.
    Outgoing,
    /// Media we received: verified plaintext, in `<state>/media/in/`.
    Incoming,
}

impl Direction {
    /// The subdirectory of `<state>/media/` holding this direction's files.
    pub fn dir_name(self) -> &'static str {
        match self {
            Direction::Outgoing => MEDIA_OUT_DIR_NAME,
            Direction::Incoming => MEDIA_IN_DIR_NAME,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Direction::Outgoing => DIRECTION_OUTGOING,
            Direction::Incoming => DIRECTION_INCOMING,
        }
    }

    fn from_byte(b: u8) -> Option<Direction> {
        match b {
            DIRECTION_OUTGOING => Some(Direction::Outgoing),
            DIRECTION_INCOMING => Some(Direction::Incoming),
            _ => None,
        }
    }
}

/// One `media` row. Byte layout (docs/media.md): version `1`, direction (0 Outgoing,
/// 1 Incoming), `len`, `created_ms`, `expires_ms` as `u64` BE, then `mimetype` and
/// `message_id` each as a `u32` BE length and UTF-8 bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MediaRow {
    pub direction: Direction,
    /// Bytes of the file on disk (the blob for Outgoing, the plaintext for Incoming).
    pub len: u64,
    pub created_ms: u64,
    /// Outgoing: created + blob expiry; Incoming: created + retention.
    pub expires_ms: u64,
    /// At most [`MAX_MEDIA_MIMETYPE_BYTES`].
    pub mimetype: String,
    /// The outbox id (Outgoing) or the inbound message id (Incoming); at most
    /// [`MAX_MEDIA_MESSAGE_ID_BYTES`].
    pub message_id: String,
}

impl MediaRow {
    /// The stored bytes. A field over its bound is [`StoreError::TooLarge`].
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        check_field("media mimetype", &self.mimetype, MAX_MEDIA_MIMETYPE_BYTES)?;
        check_field(
            "media message id",
            &self.message_id,
            MAX_MEDIA_MESSAGE_ID_BYTES,
        )?;
        let mut out =
            Vec::with_capacity(2 + 3 * 8 + 8 + self.mimetype.len() + self.message_id.len());
        out.push(MEDIA_ROW_VERSION);
        out.push(self.direction.to_byte());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        for field in [&self.mimetype, &self.message_id] {
            // INVARIANT: check_field bounded both fields far below u32::MAX.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        Ok(out)
    }

    /// Parses stored bytes; anything malformed is [`StoreError::Corrupt`], never a panic.
    pub fn decode(bytes: &[u8]) -> Result<MediaRow, StoreError> {
        let mut r = Reader::new(bytes, TABLE);
        r.version(MEDIA_ROW_VERSION)?;
        let direction = Direction::from_byte(r.u8()?).ok_or(StoreError::Corrupt {
            table: TABLE,
            detail: "unknown direction",
        })?;
        let len = r.u64()?;
        let created_ms = r.u64()?;
        let expires_ms = r.u64()?;
        let mimetype = r.string()?;
        let message_id = r.string()?;
        r.end()?;
        if mimetype.len() > MAX_MEDIA_MIMETYPE_BYTES
            || message_id.len() > MAX_MEDIA_MESSAGE_ID_BYTES
        {
            return Err(StoreError::Corrupt {
                table: TABLE,
                detail: "field over its bound",
            });
        }
        Ok(MediaRow {
            direction,
            len,
            created_ms,
            expires_ms,
            mimetype,
            message_id,
        })
    }
}

fn check_field(what: &'static str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.len() > max {
        return Err(StoreError::TooLarge {
            what,
            len: value.len() as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// Writes the row for `id` in `txn` (replacing any row with that id).
pub fn put_row(txn: &Txn, id: &MediaId, row: &MediaRow) -> Result<(), StoreError> {
    txn.put_media(&id.0, &row.encode()?)
}

/// The row for `id`, if any.
pub fn get_row(txn: &Txn, id: &MediaId) -> Result<Option<MediaRow>, StoreError> {
    txn.media(&id.0)?
        .map(|bytes| MediaRow::decode(&bytes))
        .transpose()
}

/// Removes the row for `id` in `txn`; true if it existed. The file is the caller's to
/// remove with [`MediaStore::remove`] after the commit.
pub fn remove_row(txn: &Txn, id: &MediaId) -> Result<bool, StoreError> {
    txn.remove_media(&id.0)
}

/// What went wrong with media files.
#[derive(Debug)]
#[non_exhaustive]
pub enum MediaStoreError {
    /// The sender (API caller or peer): storing `extra` more bytes would exceed the quota.
    /// The API answers 507 `quota_exceeded`; nothing was kept.
    QuotaExceeded { used: u64, extra: u64, quota: u64 },
    /// The environment: a file operation failed (disk full, permissions, I/O error). The
    /// shell logs it at `error`; the API answers 503.
    Io {
        /// What was being done, for the log (`"create media directory"`).
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The environment: the store failed while sweeping (see [`StoreError`]).
    Store(StoreError),
}

impl std::fmt::Display for MediaStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaStoreError::QuotaExceeded { used, extra, quota } => write!(
                f,
                "media quota exceeded: {used} bytes used, {extra} more would pass the quota of {quota}"
            ),
            MediaStoreError::Io { what, path, source } => {
                write!(f, "media: {what}: {}: {source}", path.display())
            }
            MediaStoreError::Store(e) => write!(f, "media: {e}"),
        }
    }
}

impl std::error::Error for MediaStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MediaStoreError::Io { source, .. } => Some(source),
            MediaStoreError::Store(e) => Some(e),
            MediaStoreError::QuotaExceeded { .. } => None,
        }
    }
}

impl From<StoreError> for MediaStoreError {
    fn from(e: StoreError) -> Self {
        MediaStoreError::Store(e)
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MediaStoreError {
    let path = path.to_path_buf();
    move |source| MediaStoreError::Io { what, path, source }
}

/// A file being written in `<state>/media/tmp/` (mode 0600). Dropping it removes the file
/// unless [`MediaStore::persist`] moved it into place.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempBlob {
    /// The open file (read and write).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Where the file is while it is temporary.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.persisted
            && let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("media: temporary {} not removed: {e}", self.path.display());
        }
    }
}

/// What one [`MediaStore::sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Rows past `expires_ms` removed with their files.
    pub expired_rows: u64,
    /// Files without a row removed.
    pub orphan_files: u64,
    /// Bytes of files removed.
    pub freed_bytes: u64,
    /// Rows that did not parse; kept, with their files, and logged at `error`.
    pub corrupt_rows: u64,
}

/// The media directory, its quota and the bytes in use. One per daemon, used from the
/// executor's one thread (`Rc<MediaStore>`).
#[derive(Debug)]
pub struct MediaStore {
    root: PathBuf,
    quota_bytes: u64,
    usage_bytes: Cell<u64>,
}

impl MediaStore {
    /// Opens `<state_dir>/media`, creating it and its subdirectories with mode 0700,
    /// deleting everything in `tmp/` (writes a crash interrupted), and summing the sizes of
    /// the files in `out/` and `in/` as the bytes in use.
    pub fn open(state_dir: &Path, quota_bytes: u64) -> Result<MediaStore, MediaStoreError> {
        let root = state_dir.join(MEDIA_DIR_NAME);
        for dir in [
            root.clone(),
            root.join(MEDIA_TMP_DIR_NAME),
            root.join(MEDIA_OUT_DIR_NAME),
            root.join(MEDIA_IN_DIR_NAME),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_error("create media directory", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_error("set media directory mode", &dir))?;
        }
        let store = MediaStore {
            root,
            quota_bytes,
            usage_bytes: Cell::new(0),
        };
        let emptied = store.empty_tmp()?;
        if emptied > 0 {
            log::info!("media: removed {emptied} unfinished temporary files");
        }
        let mut usage = 0u64;
        for dir in [Direction::Outgoing, Direction::Incoming] {
            let path = store.root.join(dir.dir_name());
            for entry in fs::read_dir(&path).map_err(io_error("list media directory", &path))? {
                let entry = entry.map_err(io_error("list media directory", &path))?;
                match entry.metadata() {
                    Ok(m) if m.is_file() => usage = usage.saturating_add(m.len()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("stat media file", &entry.path())(e)),
                }
            }
        }
        store.usage_bytes.set(usage);
        Ok(store)
    }

    fn empty_tmp(&self) -> Result<u64, MediaStoreError> {
        let tmp = self.root.join(MEDIA_TMP_DIR_NAME);
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_error("list media tmp", &tmp))? {
            let entry = entry.map_err(io_error("list media tmp", &tmp))?;
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let result = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove media tmp file", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// The path of the file for `id` in `dir` (whether or not it exists).
    pub fn path(&self, dir: Direction, id: &MediaId) -> PathBuf {
        self.root.join(dir.dir_name()).join(id.to_hex())
    }

    /// A new empty temporary file (mode 0600) with a random name.
    pub fn create_temp<R: Rng + CryptoRng>(
        &self,
        rng: &mut R,
    ) -> Result<TempBlob, MediaStoreError> {
        let path = self
            .root
            .join(MEDIA_TMP_DIR_NAME)
            .join(MediaId::random(rng).to_hex());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("create media temporary", &path))?;
        Ok(TempBlob {
            path,
            file,
            persisted: false,
        })
    }

    /// `Ok` if `extra_bytes` more fit under the quota, else
    /// [`MediaStoreError::QuotaExceeded`].
    pub fn check_quota(&self, extra_bytes: u64) -> Result<(), MediaStoreError> {
        let used = self.usage_bytes.get();
        if used.saturating_add(extra_bytes) > self.quota_bytes {
            return Err(MediaStoreError::QuotaExceeded {
                used,
                extra: extra_bytes,
                quota: self.quota_bytes,
            });
        }
        Ok(())
    }

    /// Moves `temp` into place as the file for `id` in `dir`: fsync the file, rename it
    /// (replacing a file with that id), fsync the directory. Returns the file's length,
    /// now counted as in use. The quota is the caller's to check first
    /// ([`MediaStore::check_quota`]); the caller commits the row afterwards.
    pub fn persist(
        &self,
        mut temp: TempBlob,
        dir: Direction,
        id: &MediaId,
    ) -> Result<u64, MediaStoreError> {
        temp.file
            .sync_all()
            .map_err(io_error("sync media file", &temp.path))?;
        let len = temp
            .file
            .metadata()
            .map_err(io_error("stat media file", &temp.path))?
            .len();
        let dest = self.path(dir, id);
        let replaced = match fs::metadata(&dest) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error("stat media file", &dest)(e)),
        };
        fs::rename(&temp.path, &dest).map_err(io_error("move media file into place", &dest))?;
        temp.persisted = true;
        self.usage_bytes.set(
            self.usage_bytes
                .get()
                .saturating_sub(replaced)
                .saturating_add(len),
        );
        let parent = self.root.join(dir.dir_name());
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync media directory", &parent))?;
        Ok(len)
    }

    /// Opens the file for `id` in `dir` for reading, with its length; `None` if absent.
    pub fn open_file(
        &self,
        dir: Direction,
        id: &MediaId,
    ) -> Result<Option<(File, u64)>, MediaStoreError> {
        let path = self.path(dir, id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open media file", &path)(e)),
        };
        let len = file
            .metadata()
            .map_err(io_error("stat media file", &path))?
            .len();
        Ok(Some((file, len)))
    }

    /// Deletes the file for `id` in `dir`, if it exists, and stops counting it.
    pub fn remove(&self, dir: Direction, id: &MediaId) -> Result<(), MediaStoreError> {
        self.remove_counted(dir, id).map(|_| ())
    }

    /// As [`MediaStore::remove`]; returns the bytes freed.
    fn remove_counted(&self, dir: Direction, id: &MediaId) -> Result<u64, MediaStoreError> {
        let path = self.path(dir, id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("stat media file", &path)(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("remove media file", &path)(e)),
        }
        self.usage_bytes
            .set(self.usage_bytes.get().saturating_sub(len));
        Ok(len)
    }

    /// Bytes of the files in `out/` and `in/`.
    pub fn usage_bytes(&self) -> u64 {
        self.usage_bytes.get()
    }

    /// The quota given to [`MediaStore::open`], in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Deletes rows past `expires_ms` (`expires_ms <= now_ms`) with their files, then files
    /// that have no row of their direction and are older than [`MEDIA_ORPHAN_GRACE_MS`]
    /// (a crash between persist and commit). Row removals are committed before their files
    /// go, so a crash in between leaves only orphans for the next sweep. Works in batches of
    /// [`MEDIA_SWEEP_BATCH`]; holds no transaction across batches.
    pub fn sweep(&self, store: &Store, now_ms: u64) -> Result<SweepReport, MediaStoreError> {
        let mut report = SweepReport::default();
        self.sweep_expired_rows(store, now_ms, &mut report)?;
        for dir in [Direction::Outgoing, Direction::Incoming] {
            self.sweep_orphans(store, dir, now_ms, &mut report)?;
        }
        if report.expired_rows > 0 || report.orphan_files > 0 {
            log::info!(
                "media: swept {} expired and {} orphaned files, {} bytes freed",
                report.expired_rows,
                report.orphan_files,
                report.freed_bytes
            );
        }
        Ok(report)
    }

    fn sweep_expired_rows(
        &self,
        store: &Store,
        now_ms: u64,
        report: &mut SweepReport,
    ) -> Result<(), MediaStoreError> {
        let mut after: Option<[u8; MEDIA_ID_BYTES]> = None;
        loop {
            let txn = store.begin()?;
            let batch = txn.media_scan(after.as_ref(), MEDIA_SWEEP_BATCH)?;
            let Some((last, _)) = batch.last() else {
                txn.abort()?;
                return Ok(());
            };
            after = Some(*last);
            let mut expired = Vec::new();
            for (key, bytes) in &batch {
                match MediaRow::decode(bytes) {
                    Ok(row) if row.expires_ms <= now_ms => {
                        txn.remove_media(key)?;
                        expired.push((MediaId(*key), row.direction));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        report.corrupt_rows += 1;
                        log::error!("media: row {} kept: {e}", MediaId(*key));
                    }
                }
            }
            if expired.is_empty() {
                txn.abort()?;
            } else {
                txn.commit()?;
            }
            for (id, dir) in expired {
                report.freed_bytes += self.remove_counted(dir, &id)?;
                report.expired_rows += 1;
            }
            if batch.len() < MEDIA_SWEEP_BATCH {
                return Ok(());
            }
        }
    }

    fn sweep_orphans(
        &self,
        store: &Store,
        dir: Direction,
        now_ms: u64,
        report: &mut SweepReport,
    ) -> Result<(), MediaStoreError> {
        let path = self.root.join(dir.dir_name());
        let mut candidates = Vec::new();
        for entry in fs::read_dir(&path).map_err(io_error("list media directory", &path))? {
            let entry = entry.map_err(io_error("list media directory", &path))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(MediaId::parse_hex) else {
                log::warn!(
                    "media: {} is not a media file; left alone",
                    entry.path().display()
                );
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("stat media file", &entry.path())(e)),
            };
            let old_enough = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .is_some_and(|mtime_ms| mtime_ms.saturating_add(MEDIA_ORPHAN_GRACE_MS) <= now_ms);
            if meta.is_file() && old_enough {
                candidates.push(id);
            }
            if candidates.len() >= MEDIA_SWEEP_BATCH {
                self.remove_orphans(store, dir, &mut candidates, report)?;
            }
        }
        self.remove_orphans(store, dir, &mut candidates, report)
    }

    /// Removes the files among `candidates` that have no row of direction `dir`; empties
    /// `candidates`.
    fn remove_orphans(
        &self,
        store: &Store,
        dir: Direction,
        candidates: &mut Vec<MediaId>,
        report: &mut SweepReport,
    ) -> Result<(), MediaStoreError> {
        if candidates.is_empty() {
            return Ok(());
        }
        let txn = store.begin()?;
        let mut orphans = Vec::new();
        for id in candidates.drain(..) {
            let orphan = match txn.media(&id.0)? {
                None => true,
                Some(bytes) => match MediaRow::decode(&bytes) {
                    Ok(row) => row.direction != dir,
                    // A row we cannot read may still own the file: keep it.
                    Err(_) => false,
                },
            };
            if orphan {
                orphans.push(id);
            }
        }
        txn.abort()?;
        for id in orphans {
            report.freed_bytes += self.remove_counted(dir, &id)?;
            report.orphan_files += 1;
            log::debug!("media: removed orphaned {}/{id}", dir.dir_name());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write as _;

    fn row(direction: Direction, expires_ms: u64) -> MediaRow {
        MediaRow {
            direction,
            len: 5,
            created_ms: 1,
            expires_ms,
            mimetype: "image/jpeg".into(),
            message_id: "3EB0AA".into(),
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Writes `data` through a temporary file, persists it as `id` in `dir`, and commits a
    /// row expiring at `expires_ms` unless `expires_ms` is `None`.
    fn stored(
        media: &MediaStore,
        store: &Store,
        dir: Direction,
        data: &[u8],
        expires_ms: Option<u64>,
    ) -> MediaId {
        let mut rng = rand::rng();
        let id = MediaId::random(&mut rng);
        let mut temp = media.create_temp(&mut rng).unwrap();
        temp.file().write_all(data).unwrap();
        assert_eq!(media.persist(temp, dir, &id).unwrap(), data.len() as u64);
        if let Some(expires_ms) = expires_ms {
            let txn = store.begin().unwrap();
            put_row(&txn, &id, &row(dir, expires_ms)).unwrap();
            txn.commit().unwrap();
        }
        id
    }

    #[test]
    fn ids_print_as_32_lowercase_hex_digits_and_parse_back() {
        let id = MediaId([0xab; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(MediaId::parse_hex(&id.to_hex()), Some(id));
        assert_eq!(MediaId::parse_hex(&"AB".repeat(16)), None);
        assert_eq!(MediaId::parse_hex(&"ab".repeat(15)), None);
        assert_eq!(MediaId::parse_hex(&"ag".repeat(16)), None);
        assert_eq!(MediaId::parse_hex(&"é".repeat(16)), None);
    }

    #[test]
    fn row_bytes_start_with_the_version_and_use_big_endian() {
        let bytes = row(Direction::Incoming, 0x0102).encode().unwrap();
        assert_eq!(bytes[0], MEDIA_ROW_VERSION);
        assert_eq!(bytes[1], 1);
        assert_eq!(&bytes[2..10], &5u64.to_be_bytes());
        assert_eq!(&bytes[18..26], &0x0102u64.to_be_bytes());
        assert_eq!(&bytes[26..30], &10u32.to_be_bytes());
    }

    #[test]
    fn oversize_fields_are_refused_on_write_and_read() {
        let mut r = row(Direction::Outgoing, 9);
        r.mimetype = "m".repeat(MAX_MEDIA_MIMETYPE_BYTES + 1);
        assert!(matches!(r.encode(), Err(StoreError::TooLarge { .. })));
        let mut bytes = row(Direction::Outgoing, 9).encode().unwrap();
        bytes.truncate(26);
        let long = "m".repeat(MAX_MEDIA_MIMETYPE_BYTES + 1);
        bytes.extend_from_slice(&(long.len() as u32).to_be_bytes());
        bytes.extend_from_slice(long.as_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            MediaRow::decode(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn bad_rows_are_corrupt_not_panics() {
        let good = row(Direction::Outgoing, 9).encode().unwrap();
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        let mut wrong_direction = good.clone();
        wrong_direction[1] = 7;
        let mut trailing = good.clone();
        trailing.push(0);
        for bad in [
            Vec::new(),
            good[..good.len() - 1].to_vec(),
            wrong_version,
            wrong_direction,
            trailing,
        ] {
            assert!(matches!(
                MediaRow::decode(&bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn open_makes_private_directories_and_empties_tmp() {
        let state = tempfile::tempdir().unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let tmp = state.path().join(MEDIA_DIR_NAME).join(MEDIA_TMP_DIR_NAME);
        for sub in [MEDIA_TMP_DIR_NAME, MEDIA_OUT_DIR_NAME, MEDIA_IN_DIR_NAME] {
            assert_eq!(mode_of(&state.path().join(MEDIA_DIR_NAME).join(sub)), 0o700);
        }
        let mut temp = media.create_temp(&mut rand::rng()).unwrap();
        temp.file().write_all(b"half an upload").unwrap();
        assert_eq!(mode_of(temp.path()), 0o600);
        // A crash: the TempBlob is never dropped.
        std::mem::forget(temp);
        fs::write(tmp.join("stray"), b"x").unwrap();
        fs::create_dir(tmp.join("dir")).unwrap();
        drop(media);
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(media.usage_bytes(), 0);
    }

    #[test]
    fn dropped_temp_blob_leaves_nothing_behind() {
        let state = tempfile::tempdir().unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let mut temp = media.create_temp(&mut rand::rng()).unwrap();
        temp.file().write_all(b"abandoned").unwrap();
        let path = temp.path().to_path_buf();
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn persisted_files_count_toward_usage_across_reopen() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let out = stored(&media, &store, Direction::Outgoing, b"blob!", Some(9));
        let inc = stored(&media, &store, Direction::Incoming, b"plain", Some(9));
        assert_eq!(media.usage_bytes(), 10);
        assert_eq!(mode_of(&media.path(Direction::Outgoing, &out)), 0o600);
        let (_, len) = media.open_file(Direction::Incoming, &inc).unwrap().unwrap();
        assert_eq!(len, 5);
        assert!(
            media
                .open_file(Direction::Outgoing, &inc)
                .unwrap()
                .is_none()
        );
        drop(media);
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        assert_eq!(media.usage_bytes(), 10);
        media.remove(Direction::Outgoing, &out).unwrap();
        media.remove(Direction::Outgoing, &out).unwrap();
        assert_eq!(media.usage_bytes(), 5);
    }

    #[test]
    fn persisting_over_an_existing_id_replaces_it_and_its_usage() {
        let state = tempfile::tempdir().unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let id = MediaId([7; 16]);
        for data in [&b"first version"[..], b"second"] {
            let mut temp = media.create_temp(&mut rand::rng()).unwrap();
            temp.file().write_all(data).unwrap();
            media.persist(temp, Direction::Incoming, &id).unwrap();
        }
        assert_eq!(media.usage_bytes(), 6);
        assert_eq!(
            fs::read(media.path(Direction::Incoming, &id)).unwrap(),
            b"second"
        );
    }

    #[test]
    fn quota_exceeded_names_used_extra_and_quota() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 12).unwrap();
        stored(&media, &store, Direction::Outgoing, b"0123456789", Some(9));
        assert!(media.check_quota(2).is_ok());
        let err = media.check_quota(3).unwrap_err();
        assert!(
            matches!(
                err,
                MediaStoreError::QuotaExceeded {
                    used: 10,
                    extra: 3,
                    quota: 12
                }
            ),
            "{err}"
        );
        assert!(matches!(
            media.check_quota(u64::MAX),
            Err(MediaStoreError::QuotaExceeded { .. })
        ));
        assert_eq!(media.quota_bytes(), 12);
    }

    #[test]
    fn sweep_removes_expired_rows_and_orphans_but_keeps_live_blobs() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let now = crate::clock::now_ms() + 2 * MEDIA_ORPHAN_GRACE_MS;
        let live = stored(&media, &store, Direction::Outgoing, b"live", Some(now + 1));
        let live_in = stored(&media, &store, Direction::Incoming, b"kept", Some(now + 1));
        let expired = stored(&media, &store, Direction::Outgoing, b"old!!", Some(now));
        let orphan = stored(&media, &store, Direction::Incoming, b"crash", None);
        // A row whose file is in the other direction's directory does not own it.
        let misplaced = stored(&media, &store, Direction::Outgoing, b"x", None);
        let txn = store.begin().unwrap();
        put_row(&txn, &misplaced, &row(Direction::Incoming, now + 1)).unwrap();
        txn.commit().unwrap();
        fs::write(state.path().join("media/out/README"), b"not ours").unwrap();

        let report = media.sweep(&store, now).unwrap();
        assert_eq!(
            report,
            SweepReport {
                expired_rows: 1,
                orphan_files: 2,
                freed_bytes: 11,
                corrupt_rows: 0
            }
        );
        assert!(media.path(Direction::Outgoing, &live).exists());
        assert!(media.path(Direction::Incoming, &live_in).exists());
        assert!(!media.path(Direction::Outgoing, &expired).exists());
        assert!(!media.path(Direction::Incoming, &orphan).exists());
        assert!(!media.path(Direction::Outgoing, &misplaced).exists());
        assert!(state.path().join("media/out/README").exists());
        let txn = store.begin().unwrap();
        assert!(get_row(&txn, &expired).unwrap().is_none());
        assert!(get_row(&txn, &live).unwrap().is_some());
        assert_eq!(media.usage_bytes(), 8);
    }

    #[test]
    fn sweep_spares_fresh_orphans_whose_commit_may_still_come() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let pending = stored(&media, &store, Direction::Outgoing, b"soon", None);
        let report = media.sweep(&store, crate::clock::now_ms()).unwrap();
        assert_eq!(report, SweepReport::default());
        assert!(media.path(Direction::Outgoing, &pending).exists());
    }

    #[test]
    fn sweep_keeps_corrupt_rows_and_their_files() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 1 << 20).unwrap();
        let id = stored(&media, &store, Direction::Outgoing, b"blob", None);
        let txn = store.begin().unwrap();
        txn.put_media(&id.0, &[9, 9, 9]).unwrap();
        txn.commit().unwrap();
        let report = media
            .sweep(&store, crate::clock::now_ms() + 2 * MEDIA_ORPHAN_GRACE_MS)
            .unwrap();
        assert_eq!(report.corrupt_rows, 1);
        assert_eq!(report.orphan_files, 0);
        assert!(media.path(Direction::Outgoing, &id).exists());
    }

    #[test]
    fn sweep_walks_more_rows_than_one_batch() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(state.path()).unwrap();
        let media = MediaStore::open(state.path(), 1 << 30).unwrap();
        let n = MEDIA_SWEEP_BATCH * 2 + 3;
        for i in 0..n {
            let expires = if i % 2 == 0 { 5 } else { u64::MAX };
            stored(&media, &store, Direction::Outgoing, b"b", Some(expires));
        }
        let report = media.sweep(&store, 10).unwrap();
        assert_eq!(report.expired_rows, (n as u64).div_ceil(2));
        assert_eq!(media.usage_bytes(), n as u64 / 2);
    }

    #[test]
    fn version_1_row_vector_decodes_and_encodes_byte_for_byte() {
        let path = concat!(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../.."),
            "/tests/data/media_store/row_v1.hex"
        );
        let hex = fs::read_to_string(path).unwrap();
        let bytes: Vec<u8> = (0..hex.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let want = MediaRow {
            direction: Direction::Outgoing,
            len: 1234,
            created_ms: 1_700_000_000_000,
            expires_ms: 1_702_592_000_000,
            mimetype: "image/jpeg".into(),
            message_id: "3EB0AA".into(),
        };
        assert_eq!(MediaRow::decode(&bytes).unwrap(), want);
        assert_eq!(want.encode().unwrap(), bytes);
    }

    fn any_direction() -> impl Strategy<Value = Direction> {
        prop_oneof![Just(Direction::Outgoing), Just(Direction::Incoming)]
    }

    proptest! {
        #[test]
        fn rows_round_trip(
            direction in any_direction(),
            len in any::<u64>(),
            created_ms in any::<u64>(),
            expires_ms in any::<u64>(),
            mimetype in "\\PC{0,60}",
            message_id in "[A-F0-9]{0,40}",
        ) {
            let r = MediaRow { direction, len, created_ms, expires_ms, mimetype, message_id };
            prop_assert_eq!(MediaRow::decode(&r.encode().unwrap()).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = MediaRow::decode(&bytes);
        }

        #[test]
        fn decode_of_a_mutated_row_never_panics(
            flip in 0usize..64,
            value in any::<u8>(),
            cut in 0usize..64,
        ) {
            let mut bytes = row(Direction::Outgoing, 9).encode().unwrap();
            if let Some(b) = bytes.get_mut(flip) {
                *b = value;
            }
            bytes.truncate(cut.max(1));
            let _ = MediaRow::decode(&bytes);
        }

        #[test]
        fn hex_parser_never_panics_and_round_trips(s in "\\PC{0,40}", id in any::<[u8; 16]>()) {
            if let Some(parsed) = MediaId::parse_hex(&s) {
                prop_assert_eq!(parsed.to_hex(), s);
            }
            prop_assert_eq!(MediaId::parse_hex(&MediaId(id).to_hex()), Some(MediaId(id)));
        }
    }
}
