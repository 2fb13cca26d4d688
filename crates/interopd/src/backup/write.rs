//! `interopd backup`: one archive of a state directory, written while the daemon may run.
//!
//! Order of work: open the live store read-only beside the daemon (store::snapshot), copy
//! every table of one read transaction into a fresh redb file beside the output, list the
//! media blobs its rows name and the other files of the state directory, then stream each of
//! them through SHA-256 into tar, into age (unless unencrypted), into `<out>.partial`. The
//! manifest goes last. Only a complete archive, synced, is renamed to `<out>`; on any error
//! the partial file and the snapshot are removed. Memory stays at a few buffers of
//! [`COPY_BUFFER_BYTES`] plus the media list, whatever the blobs' sizes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{
    BackupError, CONFIG_ENTRY, COPY_BUFFER_BYTES, EntryDigest, MANIFEST_ENTRY, MANIFEST_FORMAT,
    MANIFEST_VERSION, MAX_ARCHIVE_ENTRIES, MAX_CONFIG_BYTES, MAX_ENTRY_BYTES, MAX_STATE_DEPTH,
    Manifest, STATE_PREFIX, TableRows, hex, io_at,
};
use crate::media_store::{MEDIA_DIR_NAME, MediaId, MediaRow};
use crate::store::{self, DB_FILE_NAME, snapshot};

/// What to back up, and how.
pub struct BackupRequest<'a> {
    pub state_dir: &'a Path,
    /// The config file to carry (it holds the webhook secret), if there is one.
    pub config_file: Option<&'a Path>,
    pub out: &'a Path,
    /// `None` writes a plain tar (`--no-encrypt`).
    pub passphrase: Option<String>,
    pub now_ms: u64,
}

/// What a finished backup holds.
#[derive(Debug)]
pub struct BackupSummary {
    /// Bytes of the archive file.
    pub bytes: u64,
    pub manifest: Manifest,
}

/// Writes the archive `req.out`; see the file comment for the steps.
pub fn backup(req: &BackupRequest<'_>) -> Result<BackupSummary, BackupError> {
    if fs::symlink_metadata(req.out).is_ok() {
        return Err(BackupError::OutputExists {
            path: req.out.to_path_buf(),
        });
    }
    let partial = with_suffix(req.out, ".partial");
    let snapshot_path = with_suffix(req.out, ".snapshot.redb");
    // Removes both on every way out but success (and the snapshot on success too).
    let mut cleanup = Cleanup(vec![partial.clone(), snapshot_path.clone()]);
    for p in &cleanup.0 {
        remove_if_present(p)?;
    }

    let (counts, media) = take_snapshot(req.state_dir, &snapshot_path)?;
    let mut parts = vec![(
        format!("{STATE_PREFIX}{DB_FILE_NAME}"),
        snapshot_path.clone(),
    )];
    let mut media_missing = 0u64;
    for (id, row) in &media {
        let path = req
            .state_dir
            .join(MEDIA_DIR_NAME)
            .join(row.direction.dir_name())
            .join(id.to_hex());
        if path.is_file() {
            let rel = format!(
                "{STATE_PREFIX}{MEDIA_DIR_NAME}/{}/{}",
                row.direction.dir_name(),
                id.to_hex()
            );
            parts.push((rel, path));
        } else {
            // Expired and swept between the snapshot and now: restoring it gives the same
            // answer the daemon gives for an expired blob.
            media_missing += 1;
        }
    }
    state_files(req.state_dir, Path::new(""), 0, &mut parts)?;
    let config = match req.config_file {
        Some(path) => Some(read_bounded(path, MAX_CONFIG_BYTES, "config file")?),
        None => None,
    };
    let entries_total = parts.len() as u64 + u64::from(config.is_some()) + 1;
    if entries_total > MAX_ARCHIVE_ENTRIES {
        return Err(BackupError::TooLarge {
            what: "files to back up",
            len: entries_total,
            max: MAX_ARCHIVE_ENTRIES,
        });
    }

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_at("create", &partial))?;
    let sink = Sink::new(
        BufWriter::with_capacity(COPY_BUFFER_BYTES, file),
        req.passphrase.clone(),
    )
    .map_err(io_at("write", &partial))?;
    let mut tar = tar::Builder::new(sink);
    let mtime = req.now_ms / 1000;
    let mut digests = Vec::with_capacity(parts.len() + 1);
    for (name, path) in &parts {
        let f = File::open(path).map_err(io_at("read", path))?;
        let len = f.metadata().map_err(io_at("read", path))?.len();
        if len > MAX_ENTRY_BYTES {
            return Err(BackupError::TooLarge {
                what: "a file to back up (bytes)",
                len,
                max: MAX_ENTRY_BYTES,
            });
        }
        let digest = append(&mut tar, name, len, mtime, f.take(len))
            .map_err(|e| write_or_read_error(e, &partial, path))?;
        digests.push(digest);
    }
    if let Some(bytes) = &config {
        let digest = append(
            &mut tar,
            CONFIG_ENTRY,
            bytes.len() as u64,
            mtime,
            &bytes[..],
        )
        .map_err(io_at("write", &partial))?;
        digests.push(digest);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        manifest_version: MANIFEST_VERSION,
        interopd_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: counts.schema_version,
        created_ms: req.now_ms,
        tables: counts
            .rows
            .iter()
            .map(|(t, rows)| TableRows {
                table: (*t).into(),
                rows: *rows,
            })
            .collect(),
        media_missing,
        entries: digests,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Encrypt {
        detail: format!("manifest: {e}"),
    })?;
    append(
        &mut tar,
        MANIFEST_ENTRY,
        json.len() as u64,
        mtime,
        &json[..],
    )
    .map_err(io_at("write", &partial))?;
    let sink = tar.into_inner().map_err(io_at("write", &partial))?;
    let file = sink
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(io_at("write", &partial))?;
    file.sync_all().map_err(io_at("sync", &partial))?;
    let bytes = file.metadata().map_err(io_at("read", &partial))?.len();
    drop(file);
    if fs::symlink_metadata(req.out).is_ok() {
        return Err(BackupError::OutputExists {
            path: req.out.to_path_buf(),
        });
    }
    fs::rename(&partial, req.out).map_err(io_at("rename to", req.out))?;
    cleanup.0.retain(|p| p != &partial);
    sync_parent(req.out)?;
    Ok(BackupSummary { bytes, manifest })
}

/// The snapshot of the store in `state_dir` at `dst`, and the media rows it holds.
fn take_snapshot(
    state_dir: &Path,
    dst: &Path,
) -> Result<(snapshot::SnapshotCounts, Vec<(MediaId, MediaRow)>), BackupError> {
    let live = state_dir.join(DB_FILE_NAME);
    if !live.is_file() {
        return Err(BackupError::Store(store::StoreError::Io {
            path: live,
            source: io::Error::new(io::ErrorKind::NotFound, "no store here to back up"),
        }));
    }
    // Beside a running daemon this is the only open that works; with no daemon it also works
    // on a cleanly closed file. A file left unclean by a crash needs the writer's repair,
    // which is possible exactly when no daemon is running.
    let live_db = match snapshot::open_shared(&live) {
        Ok(db) => Live::Shared(db),
        Err(shared_err) => match store::open_database_shared(&live, store::STORE_CACHE_BYTES) {
            Ok(db) => Live::Own(db),
            Err(_) => return Err(shared_err.into()),
        },
    };
    // Declared after the database, so dropped before it.
    let txn = match &live_db {
        Live::Shared(db) => snapshot::begin_read(db)?,
        Live::Own(db) => snapshot::begin_read(db)?,
    };
    let copied = snapshot::create_fresh(dst).and_then(|out| snapshot::copy_into(&txn, &out));
    let counts = match copied {
        Ok(c) => c,
        // The snapshot sits beside the output, so a full disk is the output's, not the store's.
        Err(store::StoreError::Failed {
            disk_full: true, ..
        }) => {
            return Err(BackupError::Io {
                what: "write snapshot",
                path: dst.to_path_buf(),
                source: io::Error::from(io::ErrorKind::StorageFull),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut media = Vec::new();
    for (id, bytes) in snapshot::media_rows(&txn, MAX_ARCHIVE_ENTRIES)? {
        media.push((MediaId(id), MediaRow::decode(&bytes)?));
    }
    Ok((counts, media))
}

/// The live store, as it could be opened.
enum Live {
    /// Read-only, beside a daemon that may be writing.
    Shared(redb::ReadOnlyDatabase),
    /// As its writer, when no daemon runs and the file needed a repair.
    Own(redb::Database),
}

/// Every regular file under `dir/rel` that belongs in a backup besides the store and media,
/// as `(entry name, path)`, sorted. Left out: the live store file (the snapshot stands for it),
/// `media/` (only the blobs rows name go in), leftovers of atomic writes (`*.tmp`) and the
/// store's free-space probe.
fn state_files(
    root: &Path,
    rel: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), BackupError> {
    let dir = root.join(rel);
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_at("list", &dir))? {
        let entry = entry.map_err(io_at("list", &dir))?;
        names.push(entry.file_name());
        if names.len() as u64 > MAX_ARCHIVE_ENTRIES {
            return Err(BackupError::TooLarge {
                what: "files in a state directory",
                len: names.len() as u64,
                max: MAX_ARCHIVE_ENTRIES,
            });
        }
    }
    names.sort();
    for name in names {
        let Some(text) = name.to_str() else {
            continue;
        };
        let rel_path = rel.join(text);
        let top = depth == 0;
        if top && (text == DB_FILE_NAME || text == MEDIA_DIR_NAME || text == "interopd.space-probe")
        {
            continue;
        }
        if text.ends_with(".tmp") || text.contains(".restore-") {
            continue;
        }
        let path = root.join(&rel_path);
        let meta = fs::symlink_metadata(&path).map_err(io_at("read", &path))?;
        if meta.is_dir() && depth + 1 < MAX_STATE_DEPTH {
            state_files(root, &rel_path, depth + 1, out)?;
        } else if meta.is_file() {
            let mut entry = String::from(STATE_PREFIX);
            for c in rel_path.iter() {
                if entry.len() > STATE_PREFIX.len() {
                    entry.push('/');
                }
                entry.push_str(&c.to_string_lossy());
            }
            if super::is_safe_entry_path(&entry) {
                out.push((entry, path));
            }
        }
    }
    Ok(())
}

/// Appends one entry of `len` bytes read from `data`, hashing them; its manifest line.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    len: u64,
    mtime: u64,
    data: impl Read,
) -> io::Result<EntryDigest> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    let mut hashing = Hashing {
        inner: data,
        hasher: Sha256::new(),
        bytes: 0,
    };
    tar.append_data(&mut header, name, &mut hashing)?;
    if hashing.bytes != len {
        // tar pads a short read without complaint; a file that shrank under us is an error.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name} changed while it was backed up"),
        ));
    }
    Ok(EntryDigest {
        path: name.into(),
        bytes: len,
        sha256: hex(&hashing.hasher.finalize()),
    })
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct Hashing<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        self.hasher.update(got);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Where the tar stream goes: the file as it is, or through age.
enum Sink {
    Plain(BufWriter<File>),
    Age(age::stream::StreamWriter<BufWriter<File>>),
}

impl Sink {
    fn new(out: BufWriter<File>, passphrase: Option<String>) -> io::Result<Sink> {
        match passphrase {
            None => Ok(Sink::Plain(out)),
            Some(p) => {
                let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(p));
                Ok(Sink::Age(enc.wrap_output(out)?))
            }
        }
    }

    /// Ends the stream (age's last chunk) and hands back the file's writer.
    fn finish(self) -> io::Result<BufWriter<File>> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Age(w) => w.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

/// Paths removed when dropped (the partial archive, the snapshot).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_if_present(path: &Path) -> Result<(), BackupError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at("remove", path)(e)),
    }
}

/// An error from appending a file: a read error names the file read, anything else the
/// archive being written.
fn write_or_read_error(e: io::Error, archive: &Path, source: &Path) -> BackupError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io_at("read", source)(e)
    } else {
        io_at("write", archive)(e)
    }
}

/// Reads a whole small file, at most `max` bytes.
pub(crate) fn read_bounded(
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<Vec<u8>, BackupError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(io_at("read", path))?;
    if bytes.len() as u64 > max {
        return Err(BackupError::TooLarge {
            what,
            len: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// fsyncs the directory holding `path`, so that a rename into it is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at("sync", dir))
}
