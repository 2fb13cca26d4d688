//! Backups of a household's state directory, and restoring one (docs/backup.md).
//!
//! `interopd backup` ([`write::backup`]) writes one archive while the daemon may be running:
//! a tar file whose entries are
//!
//! ```text
//! state/interopd.redb        a consistent snapshot of the store (store::snapshot)
//! state/<file>               every other file of the state directory (API token, identity
//!                            marker, media host key, trigger keys, …), except the media
//! state/media/{in,out}/<id>  the media blobs the snapshot's `media` rows name
//! config/interopd.conf       the config file (it holds the webhook secret), when there is one
//! manifest.json              versions, table row counts, and the size and SHA-256 of each
//!                            entry above; always the last entry
//! ```
//!
//! encrypted with age (a passphrase, scrypt) unless `--no-encrypt`. `interopd restore`
//! ([`restore::restore`]) unpacks an archive into a staging directory beside the target,
//! verifies every entry against the manifest, opens the store as `interopd run` would (schema
//! check, migration), and only then moves the result into place.
//!
//! This file holds what both directions share: the bounds, the error type, the manifest and
//! the passphrase. It is shell code (files, the clock through its callers); the formats are the
//! `tar` and `age` crates'.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod restore;
pub mod schedule;
pub mod scheduled;
pub mod write;

/// The manifest's `format` value.
pub const MANIFEST_FORMAT: &str = "interopd-backup";
/// The manifest layout this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The archive entry of the manifest.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// The prefix of every entry that is a file of the state directory.
pub const STATE_PREFIX: &str = "state/";
/// The archive entry of the config file.
pub const CONFIG_ENTRY: &str = "config/interopd.conf";
/// Largest manifest read back, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// Most entries (files) in one archive, the manifest included.
pub const MAX_ARCHIVE_ENTRIES: u64 = 200_000;
/// Largest single entry, in bytes (the store snapshot is the largest).
pub const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Longest entry path, in bytes.
pub const MAX_ENTRY_PATH_BYTES: usize = 512;
/// Deepest directory nesting below the state directory that a backup walks.
pub const MAX_STATE_DEPTH: usize = 4;
/// Largest passphrase file, in bytes.
pub const MAX_PASSPHRASE_BYTES: u64 = 1024;
/// Largest config file carried, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Buffer for streaming each entry, in bytes: the most of any blob held in memory at once.
pub const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// The first bytes of an age file, which tell an encrypted archive from a plain tar.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// What went wrong in a backup or a restore. Every variant ends the command with exit 1,
/// after the partial output (the archive, or the staging directory) has been removed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BackupError {
    /// Environment: a file could not be read, written or synced (a full disk included).
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Environment: the store could not be opened or read, or the snapshot not written.
    Store(crate::store::StoreError),
    /// User: the output file exists already; a backup never overwrites one.
    OutputExists { path: PathBuf },
    /// User: the passphrase file is empty, too long or not UTF-8.
    Passphrase { path: PathBuf, detail: &'static str },
    /// User: the archive is encrypted and no passphrase file was given.
    PassphraseNeeded,
    /// User: the passphrase does not open this archive.
    WrongPassphrase,
    /// Outside data: the archive ends early, or its encryption does not authenticate.
    Truncated { detail: String },
    /// Outside data: not an interopd backup, or one in a layout this build does not read.
    NotABackup { detail: String },
    /// Outside data: an entry differs from what the manifest says (size, SHA-256), or is
    /// missing, or is not listed.
    Tampered { entry: String, detail: &'static str },
    /// User: the backup holds a store written by a newer interopd.
    SchemaTooNew { found: u32, supported: u32 },
    /// User: the target state directory is not empty, and `--force` was not given.
    StateNotEmpty { path: PathBuf },
    /// User: `--force` was given, but the target's store is open in a running daemon (or
    /// cannot be opened at all); stop the daemon first.
    StateInUse { path: PathBuf },
    /// User: the target config file exists, and `--force` was not given.
    ConfigExists { path: PathBuf },
    /// Environment or outside data: something over one of the bounds above.
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// Environment: encrypting failed (age).
    Encrypt { detail: String },
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())?;
                if interop_io::state_dir::is_disk_full(source) {
                    write!(f, " (the disk is full; free space and try again)")?;
                }
                Ok(())
            }
            Self::Store(e) => write!(f, "{e}"),
            Self::OutputExists { path } => write!(
                f,
                "{} exists already; a backup never overwrites a file, choose another --out",
                path.display()
            ),
            Self::Passphrase { path, detail } => {
                write!(f, "passphrase file {}: {detail}", path.display())
            }
            Self::PassphraseNeeded => write!(
                f,
                "the archive is encrypted; give its passphrase with --passphrase-file FILE"
            ),
            Self::WrongPassphrase => write!(f, "the passphrase does not open this archive"),
            Self::Truncated { detail } => {
                write!(f, "the archive is truncated or damaged: {detail}")
            }
            Self::NotABackup { detail } => write!(f, "not an interopd backup: {detail}"),
            Self::Tampered { entry, detail } => write!(
                f,
                "the archive was altered or damaged: {entry} {detail}; nothing was restored"
            ),
            Self::SchemaTooNew { found, supported } => write!(
                f,
                "the backup holds a store of schema version {found}, written by a newer interopd; this build reads up to {supported}. Restore it with that version or newer"
            ),
            Self::StateNotEmpty { path } => write!(
                f,
                "{} is not empty (it may hold a store); restore into an empty directory, or give --force to replace it (the old one is kept beside it)",
                path.display()
            ),
            Self::StateInUse { path } => write!(
                f,
                "{} is in use by a running interopd, or cannot be opened; stop the daemon (`systemctl stop interopd`) before restoring over it",
                path.display()
            ),
            Self::ConfigExists { path } => write!(
                f,
                "{} exists already; give --force to replace it",
                path.display()
            ),
            Self::TooLarge { what, len, max } => {
                write!(f, "{what} is {len}, over the bound of {max}")
            }
            Self::Encrypt { detail } => write!(f, "encrypting the archive: {detail}"),
        }
    }
}

impl std::error::Error for BackupError {}

impl From<crate::store::StoreError> for BackupError {
    fn from(e: crate::store::StoreError) -> Self {
        BackupError::Store(e)
    }
}

/// An I/O error with what was being done and where.
pub(crate) fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io { what, path, source }
}

/// The manifest, `manifest.json`: the last entry of every archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] of the build that wrote it.
    pub manifest_version: u32,
    /// The interopd version that wrote it (informational).
    pub interopd_version: String,
    /// The store's schema version in the snapshot.
    pub schema_version: u32,
    /// When the snapshot was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// Rows per table in the snapshot, in the store's table order.
    pub tables: Vec<TableRows>,
    /// Media rows whose blob was gone when the backup reached it (expired meanwhile).
    pub media_missing: u64,
    /// Every entry but the manifest, in archive order.
    pub entries: Vec<EntryDigest>,
}

/// A table's row count in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

/// An entry's size and digest in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryDigest {
    pub path: String,
    pub bytes: u64,
    /// SHA-256 of the entry's bytes, 64 lowercase hex digits.
    pub sha256: String,
}

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a passphrase from `path` (`-` is standard input): at most [`MAX_PASSPHRASE_BYTES`],
/// UTF-8, one trailing newline removed, not empty.
pub fn read_passphrase(path: &Path) -> Result<String, BackupError> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let limit = MAX_PASSPHRASE_BYTES + 1;
    if path == Path::new("-") {
        io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(io_at("read passphrase from", path))?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(io_at("read passphrase file", path))?;
    }
    if bytes.len() as u64 > MAX_PASSPHRASE_BYTES {
        return Err(BackupError::Passphrase {
            path: path.to_path_buf(),
            detail: "longer than 1024 bytes",
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| BackupError::Passphrase {
        path: path.to_path_buf(),
        detail: "not UTF-8",
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(BackupError::Passphrase {
            path: path.to_path_buf(),
            detail: "empty",
        });
    }
    Ok(text)
}

/// Whether an entry path is one a backup writes: relative, `/`-separated, only plain
/// components (no `.`, `..`, empty or absolute parts), within [`MAX_ENTRY_PATH_BYTES`].
pub fn is_safe_entry_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_ENTRY_PATH_BYTES
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_outside_the_archive_root_are_refused() {
        assert!(is_safe_entry_path("state/media/in/00ff"));
        assert!(is_safe_entry_path(MANIFEST_ENTRY));
        for bad in [
            "",
            "/etc/passwd",
            "state/../x",
            "state//x",
            "./x",
            "x/",
            "a\0b",
        ] {
            assert!(!is_safe_entry_path(bad), "{bad:?}");
        }
        assert!(!is_safe_entry_path(&"a".repeat(MAX_ENTRY_PATH_BYTES + 1)));
    }

    #[test]
    fn a_passphrase_loses_one_trailing_newline_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        std::fs::write(&p, "correct horse\n").unwrap();
        assert_eq!(read_passphrase(&p).unwrap(), "correct horse");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_passphrase(&p),
            Err(BackupError::Passphrase {
                detail: "empty",
                ..
            })
        ));
        std::fs::write(&p, vec![b'x'; 2000]).unwrap();
        assert!(matches!(
            read_passphrase(&p),
            Err(BackupError::Passphrase { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn manifest_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = serde_json::from_slice::<Manifest>(&bytes);
        }
    }
}
