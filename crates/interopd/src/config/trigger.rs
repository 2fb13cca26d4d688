//! `[[trigger]]`: trigger URLs, as the config declares them (docs/config.md). A trigger is a
//! name, a recipient, a fixed text, an optional image and a rate limit; a device that can only
//! make a GET fires it at `/v1/triggers/{name}?key=…`. Parsing only: the keys live in the
//! state directory (`api::triggers`), and whether `media_file` exists is checked by
//! [`super::Config::check_files`], because this step reads no files.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, S, line_of};

/// Most `[[trigger]]` entries in one config.
pub const MAX_TRIGGERS: usize = 64;
/// Longest trigger name, in bytes (`a-z`, `0-9`, `-`, `_`: it is a URL path segment and a
/// file name).
pub const MAX_TRIGGER_NAME_BYTES: usize = 64;
/// Longest trigger text, in bytes of UTF-8 (a caption's bound, so it also fits an image).
pub const MAX_TRIGGER_TEXT_BYTES: usize = 4096;
/// Default `rate_burst`: fires accepted at once.
pub const DEFAULT_TRIGGER_RATE_BURST: u32 = 5;
/// Default `rate_interval_secs`: after a burst, one more fire each this many seconds.
pub const DEFAULT_TRIGGER_RATE_INTERVAL_SECS: u64 = 60;
/// Largest `rate_burst`.
pub const MAX_TRIGGER_RATE_BURST: u32 = 1000;
/// Largest `rate_interval_secs` (one day).
pub const MAX_TRIGGER_RATE_INTERVAL_SECS: u64 = 24 * 60 * 60;

/// One validated `[[trigger]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerConfig {
    /// The URL path segment and key file name.
    pub name: String,
    /// The outbox recipient: a contact's E.164 digits without `+`, or a group's JID
    /// (`{id}@g.us`, from `group = "{id}"`).
    pub to: String,
    /// The text sent (the image's caption when `media_file` is set).
    pub text: String,
    /// An image sent with the text (`.jpg`, `.jpeg`, `.png`, `.gif`, `.webp`).
    pub media_file: Option<PathBuf>,
    /// Fires accepted at once.
    pub rate_burst: u32,
    /// Seconds until one more fire is accepted after a burst.
    pub rate_interval_secs: u64,
}

impl TriggerConfig {
    /// The mimetype of `media_file`, from its extension (parsing checked it is one of these).
    pub fn media_mimetype(&self) -> Option<&'static str> {
        self.media_file.as_deref().and_then(image_mimetype)
    }
}

/// The image mimetype for a file name's extension, or `None` for any other.
pub fn image_mimetype(path: &std::path::Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// Whether `name` is a trigger name: 1 to [`MAX_TRIGGER_NAME_BYTES`] of `a-z`, `0-9`, `-`
/// and `_`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TRIGGER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    name: S<String>,
    to: Option<S<String>>,
    group: Option<S<String>>,
    text: S<String>,
    media_file: Option<S<String>>,
    rate_burst: Option<S<u32>>,
    rate_interval_secs: Option<S<u64>>,
}

/// Step 2 for every `[[trigger]]`.
pub(super) fn parse(
    text: &str,
    raw: &[S<RawTrigger>],
    resolve: &dyn Fn(&str) -> PathBuf,
    media_host_on: bool,
) -> Result<Vec<TriggerConfig>, ConfigError> {
    let err = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    if let Some(extra) = raw.get(MAX_TRIGGERS) {
        return Err(err(
            extra.span(),
            format!("at most {MAX_TRIGGERS} [[trigger]] entries are allowed"),
        ));
    }
    let mut out: Vec<TriggerConfig> = Vec::with_capacity(raw.len());
    for entry in raw {
        let t = entry.get_ref();
        let name = t.name.get_ref();
        if !valid_name(name) {
            return Err(err(
                t.name.span(),
                format!(
                    "trigger.name {name:?} must be 1 to {MAX_TRIGGER_NAME_BYTES} of a-z, 0-9, '-' and '_', starting with a letter or digit"
                ),
            ));
        }
        if out.iter().any(|o| o.name == *name) {
            return Err(err(
                t.name.span(),
                format!("trigger.name {name:?} is used by an earlier [[trigger]]"),
            ));
        }
        let to = match (&t.to, &t.group) {
            (Some(_), Some(g)) => {
                return Err(err(
                    g.span(),
                    format!("trigger {name:?}: give trigger.to or trigger.group, not both"),
                ));
            }
            (None, Some(g)) => crate::group::GroupId::new(g.get_ref())
                .map(|id| id.jid())
                .map_err(|_| {
                    err(
                        g.span(),
                        format!(
                            "trigger.group {:?} must be a group id: 1 to {} digits and dashes, starting with a digit",
                            g.get_ref(),
                            crate::group::MAX_GROUP_ID_BYTES
                        ),
                    )
                })?,
            (None, None) => {
                return Err(err(
                    entry.span(),
                    format!(
                        "trigger {name:?} needs trigger.to, an E.164 number, or trigger.group, a group id"
                    ),
                ));
            }
            (Some(to), None) => crate::jid::parse_phone(to.get_ref())
                .ok()
                .filter(|_| to.get_ref().starts_with('+'))
                .ok_or_else(|| {
                    err(
                        to.span(),
                        format!(
                            "trigger.to {:?} must be an E.164 number such as \"+4915112345678\"",
                            to.get_ref()
                        ),
                    )
                })?,
        };
        let body = t.text.get_ref();
        if body.is_empty() || body.len() > MAX_TRIGGER_TEXT_BYTES {
            return Err(err(
                t.text.span(),
                format!("trigger.text must be 1 to {MAX_TRIGGER_TEXT_BYTES} bytes"),
            ));
        }
        let media_file = match &t.media_file {
            None => None,
            Some(m) => {
                let path = resolve(m.get_ref());
                if m.get_ref().is_empty() || image_mimetype(&path).is_none() {
                    return Err(err(
                        m.span(),
                        format!(
                            "trigger.media_file {:?} must be an image ending .jpg, .jpeg, .png, .gif or .webp",
                            m.get_ref()
                        ),
                    ));
                }
                if !media_host_on {
                    return Err(err(
                        entry.span(),
                        format!(
                            "trigger {name:?}: media_file needs the media host ([media] listen and public_url)"
                        ),
                    ));
                }
                Some(path)
            }
        };
        let rate_burst = match &t.rate_burst {
            None => DEFAULT_TRIGGER_RATE_BURST,
            Some(b) if (1..=MAX_TRIGGER_RATE_BURST).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                return Err(err(
                    b.span(),
                    format!("trigger.rate_burst must be 1 to {MAX_TRIGGER_RATE_BURST}"),
                ));
            }
        };
        let rate_interval_secs = match &t.rate_interval_secs {
            None => DEFAULT_TRIGGER_RATE_INTERVAL_SECS,
            Some(s) if (1..=MAX_TRIGGER_RATE_INTERVAL_SECS).contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                return Err(err(
                    s.span(),
                    format!(
                        "trigger.rate_interval_secs must be 1 to {MAX_TRIGGER_RATE_INTERVAL_SECS}"
                    ),
                ));
            }
        };
        out.push(TriggerConfig {
            name: name.clone(),
            to,
            text: body.clone(),
            media_file,
            rate_burst,
            rate_interval_secs,
        });
    }
    Ok(out)
}

/// Renders the entries as `[[trigger]]` tables that parse back to the same entries.
pub(super) fn render(
    f: &mut std::fmt::Formatter<'_>,
    triggers: &[TriggerConfig],
) -> std::fmt::Result {
    let q = super::toml_string;
    for t in triggers {
        writeln!(f)?;
        writeln!(f, "[[trigger]]")?;
        writeln!(f, "name = {}", q(&t.name))?;
        match crate::group::GroupId::parse_jid(&t.to) {
            Ok(g) => writeln!(f, "group = {}", q(g.as_str()))?,
            Err(_) => writeln!(f, "to = {}", q(&format!("+{}", t.to)))?,
        }
        writeln!(f, "text = {}", q(&t.text))?;
        if let Some(m) = &t.media_file {
            writeln!(f, "media_file = {}", q(&m.to_string_lossy()))?;
        }
        writeln!(f, "rate_burst = {}", t.rate_burst)?;
        writeln!(f, "rate_interval_secs = {}", t.rate_interval_secs)?;
    }
    Ok(())
}

/// Checks each `media_file` on disk: a regular file, not empty, within the image bound.
pub(super) fn check_files(triggers: &[TriggerConfig]) -> Result<(), ConfigError> {
    let max = crate::media_pipe::SendKind::Image.max_plaintext_bytes();
    for t in triggers {
        let Some(path) = &t.media_file else { continue };
        let problem = match std::fs::metadata(path) {
            Err(e) => Some(e.to_string()),
            Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
            Ok(m) if m.len() == 0 => Some("the file is empty".to_string()),
            Ok(m) if m.len() > max => Some(format!(
                "the file is {} bytes, over the image limit of {max}",
                m.len()
            )),
            Ok(_) => None,
        };
        if let Some(p) = problem {
            return Err(ConfigError {
                line: None,
                message: format!("trigger {:?}: media_file {}: {p}", t.name, path.display()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[account]
integrator = "acme"
user = "home"
token = "secret-token"

[gatekeeper]
address = "127.0.0.1:5222"
ca_file = "ca.pem"
"#;

    const MEDIA: &str =
        "\n[media]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://127.0.0.1:8443\"\n";

    fn p(extra: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::parse(
            &format!("{BASE}{extra}"),
            Path::new("/etc/interopd/interopd.conf"),
        )
    }

    fn door(extra: &str) -> String {
        format!(
            "\n[[trigger]]\nname = \"doorbell\"\nto = \"+4915112345678\"\ntext = \"Someone is at the door\"\n{extra}"
        )
    }

    #[test]
    fn a_trigger_gets_the_documented_rate_defaults() {
        let c = p(&door("")).unwrap();
        assert_eq!(
            c.triggers,
            vec![TriggerConfig {
                name: "doorbell".into(),
                to: "4915112345678".into(),
                text: "Someone is at the door".into(),
                media_file: None,
                rate_burst: DEFAULT_TRIGGER_RATE_BURST,
                rate_interval_secs: DEFAULT_TRIGGER_RATE_INTERVAL_SECS,
            }]
        );
        assert!(p("").unwrap().triggers.is_empty());
    }

    #[test]
    fn every_trigger_key_parses_and_renders_back() {
        let text = format!(
            "{MEDIA}{}",
            door("media_file = \"door.jpg\"\nrate_burst = 2\nrate_interval_secs = 30\n")
        );
        let c = p(&text).unwrap();
        let t = &c.triggers[0];
        assert_eq!(t.media_file, Some(PathBuf::from("/etc/interopd/door.jpg")));
        assert_eq!(t.media_mimetype(), Some("image/jpeg"));
        assert_eq!((t.rate_burst, t.rate_interval_secs), (2, 30));
        let again = crate::config::parse(&c.to_string(), Path::new("/x/interopd.conf")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn a_group_trigger_sends_to_the_groups_jid_and_renders_back() {
        let c = p(&door("").replace("to = \"+4915112345678\"", "group = \"120363000000000001\""))
            .unwrap();
        assert_eq!(c.triggers[0].to, "120363000000000001@g.us");
        let again = crate::config::parse(&c.to_string(), Path::new("/x/interopd.conf")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_triggers_are_refused_with_the_key_and_line() {
        let second =
            "\n[[trigger]]\nname = \"doorbell\"\nto = \"+4915112345679\"\ntext = \"again\"\n";
        for (text, needle, line) in [
            (door("colour = \"red\"\n"), "colour", 15),
            (
                door("").replace("+4915112345678", "+49 151"),
                "trigger.to",
                13,
            ),
            (
                door("").replace("+4915112345678", "4915112345678"),
                "trigger.to",
                13,
            ),
            (format!("{}{second}", door("")), "used by an earlier", 17),
            (
                door("").replace("\"doorbell\"", "\"Door/bell\""),
                "trigger.name",
                12,
            ),
            (
                door("").replace(
                    "to = \"+4915112345678\"",
                    "to = \"+4915112345678\"\ngroup = \"1203\"",
                ),
                "not both",
                14,
            ),
            (
                door("").replace("to = \"+4915112345678\"", "group = \"abc\""),
                "trigger.group",
                13,
            ),
            (
                door("").replace("to = \"+4915112345678\"\n", ""),
                "needs trigger.to",
                11,
            ),
            (
                door("").replace("\"Someone is at the door\"", "\"\""),
                "trigger.text",
                14,
            ),
            (door("rate_burst = 0\n"), "rate_burst", 15),
            (door("rate_interval_secs = 0\n"), "rate_interval_secs", 15),
            (
                door("media_file = \"door.jpg\"\n"),
                "needs the media host",
                11,
            ),
            (
                format!("{MEDIA}{}", door("media_file = \"door.txt\"\n")),
                "must be an image",
                19,
            ),
        ] {
            let e = p(&text).unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {e}");
            assert_eq!(e.line, Some(line), "{needle}: {e}");
        }
    }

    #[test]
    fn too_many_triggers_are_refused() {
        let many: String = (0..=MAX_TRIGGERS)
            .map(|i| format!("\n[[trigger]]\nname = \"t{i}\"\nto = \"+15550100\"\ntext = \"x\"\n"))
            .collect();
        assert!(p(&many).unwrap_err().message.contains("at most"));
    }

    #[test]
    fn check_files_needs_a_readable_non_empty_media_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("door.png");
        let text = format!(
            "{MEDIA}{}",
            door(&format!("media_file = \"{}\"\n", img.display()))
        );
        let mut c = p(&text).unwrap();
        c.pin = crate::config::ServerPin::SpkiSha256([0; 32]);
        let e = c.check_files().unwrap_err();
        assert!(e.message.contains("media_file"), "{e}");
        std::fs::write(&img, b"").unwrap();
        assert!(c.check_files().unwrap_err().message.contains("empty"));
        std::fs::write(&img, b"\x89PNG").unwrap();
        c.check_files().unwrap();
    }

    #[test]
    fn names_are_url_and_file_safe() {
        for ok in ["doorbell", "door-1", "a_b", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a/b", "a.b", "..", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
