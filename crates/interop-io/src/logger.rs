//! The logger: one line per event on stderr, each prefixed with the `<N>` syslog priority that
//! journald reads (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug and trace). Small enough
//! to write ourselves (ripgrep does the same). It never sees secrets because callers never
//! pass them: log ids and sizes, never keys, bodies or tokens.
//!
//! Levels: `error` we cannot do our job; `warn` a peer misbehaved or a retry is under way;
//! `info` lifecycle; `debug` per stanza. Chosen with `INTEROPD_LOG=error|warn|info|debug|trace`
//! (default `info`).

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Environment variable that sets the level.
pub const LOG_ENV: &str = "INTEROPD_LOG";
/// Log targets that are never printed at any level: the Signal crate's own lines carry
/// ratchet keys, identity keys and MAC key fingerprints. Our `signal` module reports the same
/// failures with message ids only.
pub const SILENCED_TARGETS: &[&str] = &["wacore_libsignal", "libsignal"];

/// Whether a record from `target` may be printed at all.
pub fn target_allowed(target: &str) -> bool {
    !SILENCED_TARGETS.iter().any(|t| {
        target == *t
            || target
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

struct Logger;

/// The journald priority for a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one line: `<N>target: message`, with newlines in the message escaped so one event
/// is always one line.
pub fn format_line(level: Level, target: &str, message: &str) -> String {
    let mut line = format!("<{}>{}: ", priority(level), target);
    for c in message.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
    line.push('\n');
    line
}

/// Parses a level name; `None` for anything else.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level() && target_allowed(metadata.target())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record.level(), record.target(), &record.args().to_string());
        // One write call per line, so lines from one process never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

static LOGGER: Logger = Logger;

/// Installs the logger at the level from `INTEROPD_LOG` (default info). Calling it twice is
/// harmless.
pub fn init() {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| parse_level(&v))
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_journald_priorities() {
        assert_eq!(format_line(Level::Error, "link", "down"), "<3>link: down\n");
        assert_eq!(format_line(Level::Warn, "link", "x"), "<4>link: x\n");
        assert_eq!(format_line(Level::Info, "link", "x"), "<6>link: x\n");
        assert_eq!(format_line(Level::Debug, "link", "x"), "<7>link: x\n");
    }

    #[test]
    fn one_event_is_always_one_line() {
        let l = format_line(Level::Info, "t", "a\nb\rc");
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with('\n'));
    }

    #[test]
    fn the_signal_crates_lines_are_never_printed() {
        assert!(!target_allowed("wacore_libsignal"));
        assert!(!target_allowed(
            "wacore_libsignal::protocol::session_cipher"
        ));
        assert!(target_allowed("wacore_libsignal_other"));
        assert!(target_allowed("interopd::link"));
        assert!(target_allowed("rustls::conn"));
    }

    #[test]
    fn level_names_parse() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
