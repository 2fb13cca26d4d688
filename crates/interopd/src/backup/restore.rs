//! `interopd restore`: an archive back into a state directory, all of it or nothing.
//!
//! Order of work, each step refusing before the next:
//! 1. the target must be empty or absent (or `--force`), and so must the target config file;
//! 2. decrypt (age) if the archive is encrypted; a wrong passphrase stops here;
//! 3. unpack every entry into a staging directory beside the target (`.<name>.restore-<pid>`,
//!    mode 0700, files 0600), hashing each; only regular files with plain relative paths;
//! 4. read the stream to its end, so that age authenticates the last chunk (a truncated
//!    archive stops here at the latest);
//! 5. compare every entry with the manifest: size, SHA-256, nothing missing, nothing extra;
//! 6. open the unpacked store as `interopd run` would: integrity check, schema version
//!    (newer is refused), migration of an older one;
//! 7. move the staging directory into place (an existing target, with `--force`, is renamed
//!    to `<state>.replaced-<unix seconds>` first, never deleted) and write the config.
//!
//! Any error before step 7 removes the staging directory, so the target is as it was.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::write::{Hashing, read_bounded, sync_parent};
use super::{
    AGE_MAGIC, BackupError, CONFIG_ENTRY, COPY_BUFFER_BYTES, MANIFEST_ENTRY, MANIFEST_FORMAT,
    MANIFEST_VERSION, MAX_ARCHIVE_ENTRIES, MAX_CONFIG_BYTES, MAX_ENTRY_BYTES, MAX_MANIFEST_BYTES,
    Manifest, STATE_PREFIX, hex, io_at, is_safe_entry_path,
};
use crate::store::{DB_FILE_NAME, SCHEMA_VERSION, Store, StoreError};

/// Bytes after the tar's end marker that a restore reads and ignores (tar pads to a record).
pub const MAX_TRAILING_BYTES: u64 = 64 * 1024;

/// What to restore, and where.
pub struct RestoreRequest<'a> {
    pub input: &'a Path,
    pub state_dir: &'a Path,
    /// Where to write the archive's config file, if anywhere.
    pub config_out: Option<&'a Path>,
    pub passphrase: Option<String>,
    pub force: bool,
    pub now_ms: u64,
}

/// What a finished restore did.
#[derive(Debug)]
pub struct RestoreSummary {
    pub manifest: Manifest,
    /// Where the directory that was replaced (with `--force`) now is.
    pub replaced: Option<PathBuf>,
    /// Whether the config file was written to `config_out`.
    pub config_written: bool,
}

/// Restores `req.input` into `req.state_dir`; see the file comment for the steps.
pub fn restore(req: &RestoreRequest<'_>) -> Result<RestoreSummary, BackupError> {
    let target_has_files = match fs::read_dir(req.state_dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_at("read", req.state_dir)(e)),
    };
    if target_has_files && !req.force {
        return Err(BackupError::StateNotEmpty {
            path: req.state_dir.to_path_buf(),
        });
    }
    // Never move a live store aside: a daemon running on it would go on writing into the
    // directory that --force just replaced. Opening it as its writer fails while one runs.
    let live = req.state_dir.join(DB_FILE_NAME);
    if target_has_files && live.exists() {
        match crate::store::open_database_shared(&live, crate::store::STORE_CACHE_BYTES) {
            Ok(db) => drop(db),
            // A damaged store is what a restore over it is for.
            Err(StoreError::CorruptFile { .. }) => {}
            Err(_) => return Err(BackupError::StateInUse { path: live }),
        }
    }
    if let Some(c) = req.config_out
        && fs::symlink_metadata(c).is_ok()
        && !req.force
    {
        return Err(BackupError::ConfigExists {
            path: c.to_path_buf(),
        });
    }

    let file = File::open(req.input).map_err(io_at("open", req.input))?;
    let mut input = BufReader::with_capacity(COPY_BUFFER_BYTES, file);
    let head = input.fill_buf().map_err(io_at("read", req.input))?;
    let encrypted = head.starts_with(AGE_MAGIC);
    let stream: Box<dyn Read> = if encrypted {
        let passphrase = req
            .passphrase
            .clone()
            .ok_or(BackupError::PassphraseNeeded)?;
        let decryptor = age::Decryptor::new_buffered(input).map_err(decrypt_error)?;
        let identity = age::scrypt::Identity::new(age::secrecy::SecretString::from(passphrase));
        let reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(decrypt_error)?;
        Box::new(reader)
    } else {
        Box::new(input)
    };

    let (parent, name) = split_target(req.state_dir)?;
    let staging = parent.join(format!(".{name}.restore-{}", std::process::id()));
    if fs::symlink_metadata(&staging).is_ok() {
        fs::remove_dir_all(&staging).map_err(io_at("remove", &staging))?;
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&staging)
        .map_err(io_at("create", &staging))?;
    let _cleanup = RemoveDir(staging.clone());
    let new_state = staging.join("state");
    let config_copy = staging.join("config");

    let (manifest, found) = unpack(stream, &new_state, &config_copy)?;
    verify(&manifest, &found)?;
    if manifest.schema_version > SCHEMA_VERSION {
        return Err(BackupError::SchemaTooNew {
            found: manifest.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    match Store::open(&new_state) {
        Ok(store) => drop(store),
        Err(StoreError::SchemaTooNew { found, supported }) => {
            return Err(BackupError::SchemaTooNew { found, supported });
        }
        Err(e) => return Err(e.into()),
    }

    let mut config_written = false;
    if let Some(dst) = req.config_out
        && found.iter().any(|(p, _, _)| p == CONFIG_ENTRY)
    {
        let bytes = read_bounded(&config_copy, MAX_CONFIG_BYTES, "config file")?;
        interop_io::state_dir::write_file_atomic(dst, &bytes, 0o600).map_err(
            |(path, source)| BackupError::Io {
                what: "write",
                path,
                source,
            },
        )?;
        config_written = true;
    }
    let replaced = if target_has_files {
        let aside = parent.join(format!("{name}.replaced-{}", req.now_ms / 1000));
        fs::rename(req.state_dir, &aside).map_err(io_at("move aside", req.state_dir))?;
        Some(aside)
    } else {
        match fs::remove_dir(req.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at("replace", req.state_dir)(e)),
        }
        None
    };
    fs::rename(&new_state, req.state_dir).map_err(io_at("move into place", req.state_dir))?;
    sync_parent(req.state_dir)?;
    Ok(RestoreSummary {
        manifest,
        replaced,
        config_written,
    })
}

/// An entry as unpacked: its archive path, bytes and SHA-256 hex.
type Found = Vec<(String, u64, String)>;

/// Unpacks every entry of the tar stream; the manifest, and what was found besides it.
fn unpack(
    stream: Box<dyn Read>,
    new_state: &Path,
    config_copy: &Path,
) -> Result<(Manifest, Found), BackupError> {
    let mut archive = tar::Archive::new(stream);
    let mut found: Found = Vec::new();
    let mut manifest: Option<Vec<u8>> = None;
    let entries = archive.entries().map_err(stream_error)?;
    for entry in entries {
        let mut entry = entry.map_err(stream_error)?;
        if found.len() as u64 + 1 >= MAX_ARCHIVE_ENTRIES {
            return Err(BackupError::TooLarge {
                what: "entries in the archive",
                len: found.len() as u64 + 1,
                max: MAX_ARCHIVE_ENTRIES,
            });
        }
        let path = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| {
            BackupError::NotABackup {
                detail: "an entry path is not UTF-8".into(),
            }
        })?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BackupError::NotABackup {
                detail: format!("{path:?} is not a regular file"),
            });
        }
        if !is_safe_entry_path(&path) {
            return Err(BackupError::NotABackup {
                detail: format!("entry path {path:?} leaves the archive"),
            });
        }
        if manifest.is_some() {
            return Err(BackupError::NotABackup {
                detail: format!("{path:?} follows the manifest"),
            });
        }
        let size = entry.size();
        if path == MANIFEST_ENTRY {
            if size > MAX_MANIFEST_BYTES {
                return Err(BackupError::TooLarge {
                    what: "the manifest (bytes)",
                    len: size,
                    max: MAX_MANIFEST_BYTES,
                });
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(stream_error)?;
            manifest = Some(bytes);
            continue;
        }
        if size > MAX_ENTRY_BYTES {
            return Err(BackupError::TooLarge {
                what: "an entry (bytes)",
                len: size,
                max: MAX_ENTRY_BYTES,
            });
        }
        if found.iter().any(|(p, _, _)| p == &path) {
            return Err(BackupError::Tampered {
                entry: path,
                detail: "appears twice",
            });
        }
        let dst = if path == CONFIG_ENTRY {
            config_copy.to_path_buf()
        } else if let Some(rel) = path.strip_prefix(STATE_PREFIX) {
            new_state.join(rel)
        } else {
            return Err(BackupError::NotABackup {
                detail: format!("unexpected entry {path:?}"),
            });
        };
        if let Some(dir) = dst.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_at("create", dir))?;
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dst)
            .map_err(io_at("create", &dst))?;
        let mut hashing = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            bytes: 0,
        };
        copy(&mut hashing, &mut out, &dst)?;
        out.sync_all().map_err(io_at("sync", &dst))?;
        if hashing.bytes != size {
            return Err(BackupError::Truncated {
                detail: format!("{path} ends early"),
            });
        }
        let sha = hex(&hashing.hasher.finalize());
        found.push((path, size, sha));
    }
    // Read to the end, so that an encrypted stream authenticates its last chunk.
    let mut rest = archive.into_inner().take(MAX_TRAILING_BYTES + 1);
    let trailing = io::copy(&mut rest, &mut io::sink()).map_err(stream_error)?;
    if trailing > MAX_TRAILING_BYTES {
        return Err(BackupError::NotABackup {
            detail: "data after the end of the archive".into(),
        });
    }
    let Some(bytes) = manifest else {
        return Err(BackupError::Truncated {
            detail: "it ends before its manifest".into(),
        });
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| BackupError::NotABackup {
            detail: format!("manifest: {e}"),
        })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(BackupError::NotABackup {
            detail: format!("manifest format {:?}", manifest.format),
        });
    }
    if manifest.manifest_version != MANIFEST_VERSION {
        return Err(BackupError::NotABackup {
            detail: format!(
                "manifest version {} (this build reads {MANIFEST_VERSION}); restore it with the interopd that wrote it",
                manifest.manifest_version
            ),
        });
    }
    Ok((manifest, found))
}

/// Every entry matches the manifest, and the manifest names nothing that is not there.
fn verify(manifest: &Manifest, found: &Found) -> Result<(), BackupError> {
    for want in &manifest.entries {
        let Some((_, bytes, sha)) = found.iter().find(|(p, _, _)| p == &want.path) else {
            return Err(BackupError::Tampered {
                entry: want.path.clone(),
                detail: "is missing",
            });
        };
        if *bytes != want.bytes {
            return Err(BackupError::Tampered {
                entry: want.path.clone(),
                detail: "has another size than its manifest says",
            });
        }
        if *sha != want.sha256 {
            return Err(BackupError::Tampered {
                entry: want.path.clone(),
                detail: "does not match its SHA-256 in the manifest",
            });
        }
    }
    for (path, _, _) in found {
        if !manifest.entries.iter().any(|e| &e.path == path) {
            return Err(BackupError::Tampered {
                entry: path.clone(),
                detail: "is not in the manifest",
            });
        }
    }
    let store_entry = format!("{STATE_PREFIX}{DB_FILE_NAME}");
    if !found.iter().any(|(p, _, _)| *p == store_entry) {
        return Err(BackupError::NotABackup {
            detail: format!("no {store_entry}"),
        });
    }
    Ok(())
}

fn copy(from: &mut impl Read, to: &mut File, dst: &Path) -> Result<(), BackupError> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_error(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk).map_err(io_at("write", dst))?;
    }
}

/// A read error of the archive stream: the end came early, or the ciphertext does not
/// authenticate (which is what a cut inside an encrypted chunk looks like), or the tar is
/// malformed.
fn stream_error(e: io::Error) -> BackupError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => BackupError::Truncated {
            detail: e.to_string(),
        },
        _ => BackupError::NotABackup {
            detail: e.to_string(),
        },
    }
}

fn decrypt_error(e: age::DecryptError) -> BackupError {
    match e {
        age::DecryptError::DecryptionFailed
        | age::DecryptError::NoMatchingKeys
        | age::DecryptError::KeyDecryptionFailed => BackupError::WrongPassphrase,
        age::DecryptError::InvalidMac => BackupError::Truncated {
            detail: "its header does not authenticate".into(),
        },
        age::DecryptError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            BackupError::Truncated {
                detail: "it ends inside its header".into(),
            }
        }
        other => BackupError::NotABackup {
            detail: other.to_string(),
        },
    }
}

/// The directory the target lives in, and its own name.
fn split_target(state_dir: &Path) -> Result<(PathBuf, String), BackupError> {
    let name = state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| BackupError::NotABackup {
            detail: format!("--state {} has no directory name", state_dir.display()),
        })?;
    let parent = match state_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_at("create", &parent))?;
    Ok((parent, name))
}

/// A directory removed, with everything in it, when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
