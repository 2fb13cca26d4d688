//! `[backup]`: scheduled backups, as the config declares them (docs/config.md, docs/backup.md).
//! A directory, an interval, how many archives to keep, and the passphrase file that encrypts
//! them (or an explicit `encrypt = false`). Parsing only: whether the passphrase file reads is
//! checked by `backup::scheduled::check_files` (for `check-config` and `run`); whether `dir`
//! exists and is writable is checked at each run by the daemon, because it may be a disk or a
//! network mount that comes and goes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, S, line_of};

/// Default `backup.every_secs`: one backup a day.
pub const DEFAULT_BACKUP_EVERY_SECS: u64 = 24 * 60 * 60;
/// Shortest `backup.every_secs`, in seconds. Small enough for a test to see rotation; a
/// household wants hours.
pub const MIN_BACKUP_EVERY_SECS: u64 = 2;
/// Longest `backup.every_secs` (30 days), in seconds.
pub const MAX_BACKUP_EVERY_SECS: u64 = 30 * 24 * 60 * 60;
/// Default `backup.keep`: a week of daily archives.
pub const DEFAULT_BACKUP_KEEP: u32 = 7;
/// Most archives `backup.keep` may ask for.
pub const MAX_BACKUP_KEEP: u32 = 1000;

/// The validated `[backup]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// Where the archives go (resolved against the config file's directory).
    pub dir: PathBuf,
    /// Seconds between two backups.
    pub every_secs: u64,
    /// Archives kept in `dir`; the oldest beyond this are deleted after a success.
    pub keep: u32,
    /// The passphrase file; `None` exactly when `encrypt = false` (plain tar archives).
    pub passphrase_file: Option<PathBuf>,
    /// The config file itself: each run carries it into the archive (it holds the webhook
    /// secret), as `interopd backup --config` does. Not a key of the section.
    pub config_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    dir: Option<S<String>>,
    every_secs: Option<S<u64>>,
    keep: Option<S<u32>>,
    passphrase_file: Option<S<String>>,
    encrypt: Option<S<bool>>,
}

/// Step 2 for `[backup]`. `state_dir` is the config's state directory: `dir` may not be it or
/// lie inside it, or each archive would carry the ones before it.
pub(super) fn parse(
    text: &str,
    raw: Option<&S<RawBackup>>,
    resolve: &dyn Fn(&str) -> PathBuf,
    state_dir: &Path,
    config_file: &Path,
) -> Result<Option<BackupConfig>, ConfigError> {
    let Some(section) = raw else {
        return Ok(None);
    };
    let err = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let b = section.get_ref();
    let dir = match &b.dir {
        None => {
            return Err(err(
                section.span(),
                "backup.dir is required: the directory the archives go to".into(),
            ));
        }
        Some(d) if d.get_ref().is_empty() => {
            return Err(err(d.span(), "backup.dir must not be empty".into()));
        }
        Some(d) => {
            let dir = resolve(d.get_ref());
            if dir.starts_with(state_dir) {
                return Err(err(
                    d.span(),
                    format!(
                        "backup.dir {} is inside the state directory {}; put backups on another disk or at least beside it, or each archive would carry the ones before it",
                        dir.display(),
                        state_dir.display()
                    ),
                ));
            }
            dir
        }
    };
    let every_secs = match &b.every_secs {
        None => DEFAULT_BACKUP_EVERY_SECS,
        Some(v) if (MIN_BACKUP_EVERY_SECS..=MAX_BACKUP_EVERY_SECS).contains(v.get_ref()) => {
            *v.get_ref()
        }
        Some(v) => {
            return Err(err(
                v.span(),
                format!(
                    "backup.every_secs must be {MIN_BACKUP_EVERY_SECS} to {MAX_BACKUP_EVERY_SECS} seconds"
                ),
            ));
        }
    };
    let keep = match &b.keep {
        None => DEFAULT_BACKUP_KEEP,
        Some(v) if (1..=MAX_BACKUP_KEEP).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            return Err(err(
                v.span(),
                format!("backup.keep must be 1 to {MAX_BACKUP_KEEP}"),
            ));
        }
    };
    let encrypt = b.encrypt.as_ref().map(|e| (*e.get_ref(), e.span()));
    let passphrase_file = match (&b.passphrase_file, encrypt) {
        (Some(p), None | Some((true, _))) if p.get_ref().is_empty() => {
            return Err(err(
                p.span(),
                "backup.passphrase_file must not be empty".into(),
            ));
        }
        (Some(p), None | Some((true, _))) => Some(resolve(p.get_ref())),
        (Some(p), Some((false, _))) => {
            return Err(err(
                p.span(),
                "backup.passphrase_file and backup.encrypt = false contradict each other; keep one"
                    .into(),
            ));
        }
        (None, Some((false, _))) => None,
        (None, None | Some((true, _))) => {
            return Err(err(
                section.span(),
                "backup.passphrase_file is required: a backup holds the household's private keys, so it is encrypted; set backup.encrypt = false to write them in the clear instead".into(),
            ));
        }
    };
    Ok(Some(BackupConfig {
        dir,
        every_secs,
        keep,
        passphrase_file,
        config_file: config_file.to_path_buf(),
    }))
}

/// The `[backup]` section as a config file line set (for `Config`'s `Display`).
pub(super) fn render(
    f: &mut std::fmt::Formatter<'_>,
    backup: Option<&BackupConfig>,
) -> std::fmt::Result {
    let Some(b) = backup else { return Ok(()) };
    let q = super::toml_string;
    writeln!(f)?;
    writeln!(f, "[backup]")?;
    writeln!(f, "dir = {}", q(&b.dir.to_string_lossy()))?;
    writeln!(f, "every_secs = {}", b.every_secs)?;
    writeln!(f, "keep = {}", b.keep)?;
    match &b.passphrase_file {
        Some(p) => writeln!(f, "passphrase_file = {}", q(&p.to_string_lossy())),
        None => writeln!(f, "encrypt = false"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse as parse_config;
    use super::*;

    const BASE: &str = r#"
[account]
integrator = "acme"
user = "home"
token = "secret-token"

[gatekeeper]
address = "127.0.0.1:5222"
server_name = "localhost"
ca_file = "ca.pem"

[state]
dir = "/var/lib/interopd"
"#;

    fn p(section: &str) -> Result<Option<BackupConfig>, ConfigError> {
        parse_config(
            &format!("{BASE}\n{section}"),
            Path::new("/etc/interopd/interopd.conf"),
        )
        .map(|c| c.backup)
    }

    #[test]
    fn a_backup_section_takes_its_defaults_and_resolves_paths_beside_the_config() {
        let b = p("[backup]\ndir = \"backups\"\npassphrase_file = \"pass\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.dir, PathBuf::from("/etc/interopd/backups"));
        assert_eq!(b.every_secs, DEFAULT_BACKUP_EVERY_SECS);
        assert_eq!(b.keep, DEFAULT_BACKUP_KEEP);
        assert_eq!(b.passphrase_file, Some(PathBuf::from("/etc/interopd/pass")));
        assert_eq!(b.config_file, PathBuf::from("/etc/interopd/interopd.conf"));
        assert_eq!(p("").unwrap(), None);
    }

    #[test]
    fn a_backup_without_a_passphrase_needs_an_explicit_encrypt_false() {
        let e = p("[backup]\ndir = \"/mnt/b\"\n").unwrap_err();
        assert!(e.message.contains("passphrase_file is required"), "{e}");
        let b = p("[backup]\ndir = \"/mnt/b\"\nencrypt = false\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.passphrase_file, None);
        let e = p("[backup]\ndir = \"/mnt/b\"\nencrypt = false\npassphrase_file = \"p\"\n")
            .unwrap_err();
        assert!(e.message.contains("contradict"), "{e}");
    }

    #[test]
    fn backup_bounds_and_a_dir_inside_the_state_directory_are_refused() {
        for (section, needle) in [
            ("every_secs = 1", "every_secs must be 2 to"),
            ("every_secs = 2592001", "every_secs must be 2 to"),
            ("keep = 0", "keep must be 1 to 1000"),
            ("keep = 1001", "keep must be 1 to 1000"),
            ("colour = 1", "unknown field"),
        ] {
            let e = p(&format!(
                "[backup]\ndir = \"/mnt/b\"\nencrypt = false\n{section}\n"
            ))
            .unwrap_err();
            assert!(e.message.contains(needle), "{section}: {e}");
            assert!(e.line.is_some(), "{section}");
        }
        let e = p("[backup]\ndir = \"/var/lib/interopd/backups\"\nencrypt = false\n").unwrap_err();
        assert!(e.message.contains("inside the state directory"), "{e}");
        let e = p("[backup]\nencrypt = false\n").unwrap_err();
        assert!(e.message.contains("backup.dir is required"), "{e}");
        let ok = p("[backup]\ndir = \"/mnt/b\"\nencrypt = false\nevery_secs = 2\nkeep = 1000\n");
        assert!(ok.unwrap().is_some());
    }

    #[test]
    fn a_backup_section_renders_back_to_itself() {
        for section in [
            "[backup]\ndir = \"/mnt/b\"\nevery_secs = 3600\nkeep = 3\npassphrase_file = \"/etc/p\"\n",
            "[backup]\ndir = \"/mnt/b\"\nencrypt = false\n",
        ] {
            let path = Path::new("/etc/interopd/interopd.conf");
            let c = parse_config(&format!("{BASE}\n{section}"), path).unwrap();
            let again = parse_config(&c.to_string(), path).unwrap();
            assert_eq!(again, c);
        }
    }
}
