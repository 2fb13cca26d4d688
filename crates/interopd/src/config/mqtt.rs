//! `[mqtt]`: the MQTT bridge with Home Assistant discovery, as the config declares it
//! (docs/config.md, docs/mqtt.md). Parsing only: the password file is read by the bridge
//! when it starts (and checked by [`super::Config::check_files`]), and the client itself is
//! `crate::mqtt`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, S, line_of};

/// The MQTT port when `url` names none (`mqtt://`).
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// The MQTT-over-TLS port when `url` names none (`mqtts://`).
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default `topic_prefix`.
pub const DEFAULT_TOPIC_PREFIX: &str = "interopd";
/// Default `discovery_prefix`: the one Home Assistant listens on.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";
/// Default `keepalive_secs`: the MQTT keepalive we announce in CONNECT.
pub const DEFAULT_MQTT_KEEPALIVE_SECS: u16 = 30;
/// Shortest and longest `keepalive_secs`.
pub const MIN_MQTT_KEEPALIVE_SECS: u16 = 5;
pub const MAX_MQTT_KEEPALIVE_SECS: u16 = 600;
/// Longest `url`, `username`, a path, `client_id`, `node_id` or a prefix, in bytes.
pub const MAX_MQTT_FIELD_BYTES: usize = 128;
/// Most entries in `contacts`.
pub const MAX_MQTT_CONTACTS: usize = 64;

/// The `[mqtt]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The `url` as written (rendered back as is).
    pub url: String,
    /// The broker's host name or address.
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS 1.3 to the broker, trusting `ca_file`.
    pub tls: bool,
    /// The CA certificate(s) that sign the broker's certificate (PEM); required by `mqtts://`.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    /// A file whose first line is the password (kept out of the config). Never logged.
    pub password_file: Option<PathBuf>,
    pub client_id: String,
    pub topic_prefix: String,
    pub discovery_prefix: String,
    /// The `<node>` of every topic and the device's identifier.
    pub node_id: String,
    /// Digits (no `+`) of the contacts that get a notify entity; `None`: every known contact.
    pub contacts: Option<Vec<String>>,
    pub keepalive_secs: u16,
}

impl MqttConfig {
    /// `<topic_prefix>/<node_id>`, the root of the bridge's own topics.
    pub fn base_topic(&self) -> String {
        format!("{}/{}", self.topic_prefix, self.node_id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    url: S<String>,
    username: Option<S<String>>,
    password_file: Option<S<String>>,
    ca_file: Option<S<String>>,
    client_id: Option<S<String>>,
    topic_prefix: Option<S<String>>,
    discovery_prefix: Option<S<String>>,
    node_id: Option<S<String>>,
    contacts: Option<S<Vec<String>>>,
    keepalive_secs: Option<S<u16>>,
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` (an optional trailing `/`) as (host, port,
/// tls); `None` for anything else.
pub fn parse_mqtt_url(url: &str) -> Option<(String, u16, bool)> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else {
        return None;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls {
        DEFAULT_MQTTS_PORT
    } else {
        DEFAULT_MQTT_PORT
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h, port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (rest, default_port),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    (host_ok && port != 0).then(|| (host.to_string(), port, tls))
}

/// Whether `s` may stand in a topic name as one or more levels: `A-Z a-z 0-9 _ -`, and `/`
/// between levels (never first, last or doubled). MQTT wildcards (`+`, `#`) are refused.
pub fn valid_topic_part(s: &str, allow_slash: bool) -> bool {
    !s.is_empty()
        && s.len() <= MAX_MQTT_FIELD_BYTES
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (allow_slash && b == b'/')
        })
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.contains("//")
}

/// The default `node_id` for an account: its name with every byte that may not stand in a
/// topic level made `_`.
pub fn default_node_id(account: &str) -> String {
    account
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Step 2 for `[mqtt]`; `account` gives the default `node_id`.
pub(super) fn parse(
    text: &str,
    raw: Option<&RawMqtt>,
    account: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<MqttConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let err = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let url = raw.url.get_ref();
    let Some((host, port, tls)) = (url.len() <= MAX_MQTT_FIELD_BYTES)
        .then(|| parse_mqtt_url(url))
        .flatten()
    else {
        return Err(err(
            raw.url.span(),
            format!("mqtt.url {url:?} must be mqtt://host[:port] or mqtts://host[:port]"),
        ));
    };
    let path = |v: &Option<S<String>>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
        match v {
            None => Ok(None),
            Some(p) if p.get_ref().is_empty() || p.get_ref().len() > MAX_MQTT_FIELD_BYTES => {
                Err(err(
                    p.span(),
                    format!("mqtt.{key} must be 1 to {MAX_MQTT_FIELD_BYTES} bytes"),
                ))
            }
            Some(p) => Ok(Some(resolve(p.get_ref()))),
        }
    };
    let ca_file = path(&raw.ca_file, "ca_file")?;
    if tls && ca_file.is_none() {
        return Err(err(
            raw.url.span(),
            "mqtts:// needs mqtt.ca_file (the CA that signs the broker's certificate)".into(),
        ));
    }
    if !tls && let Some(c) = &raw.ca_file {
        return Err(err(
            c.span(),
            "mqtt.ca_file is for an mqtts:// url only".into(),
        ));
    }
    let password_file = path(&raw.password_file, "password_file")?;
    let username = match &raw.username {
        None => None,
        Some(u) if u.get_ref().is_empty() || u.get_ref().len() > MAX_MQTT_FIELD_BYTES => {
            return Err(err(
                u.span(),
                format!("mqtt.username must be 1 to {MAX_MQTT_FIELD_BYTES} bytes"),
            ));
        }
        Some(u) => Some(u.get_ref().clone()),
    };
    if let (None, Some(p)) = (&username, &raw.password_file) {
        return Err(err(
            p.span(),
            "mqtt.password_file needs mqtt.username".into(),
        ));
    }
    let part = |v: &Option<S<String>>, key: &str, default: String, slash: bool| match v {
        None => Ok(default),
        Some(s) if valid_topic_part(s.get_ref(), slash) => Ok(s.get_ref().clone()),
        Some(s) => Err(err(
            s.span(),
            format!(
                "mqtt.{key} {:?} must be 1 to {MAX_MQTT_FIELD_BYTES} of A-Z, a-z, 0-9, '_' and '-'{}",
                s.get_ref(),
                if slash {
                    ", with '/' between levels"
                } else {
                    ""
                }
            ),
        )),
    };
    let topic_prefix = part(
        &raw.topic_prefix,
        "topic_prefix",
        DEFAULT_TOPIC_PREFIX.into(),
        true,
    )?;
    let discovery_prefix = part(
        &raw.discovery_prefix,
        "discovery_prefix",
        DEFAULT_DISCOVERY_PREFIX.into(),
        true,
    )?;
    let node_id = part(&raw.node_id, "node_id", default_node_id(account), false)?;
    let client_id = part(
        &raw.client_id,
        "client_id",
        format!("interopd-{node_id}"),
        false,
    )?;
    let contacts = match &raw.contacts {
        None => None,
        Some(list) if list.get_ref().len() > MAX_MQTT_CONTACTS => {
            return Err(err(
                list.span(),
                format!("mqtt.contacts lists more than {MAX_MQTT_CONTACTS} numbers"),
            ));
        }
        Some(list) => {
            let mut digits = Vec::new();
            for c in list.get_ref() {
                let Ok(d) = crate::jid::parse_phone(c) else {
                    return Err(err(
                        list.span(),
                        format!(
                            "mqtt.contacts: {c:?} is not an E.164 number such as \"+4915112345678\""
                        ),
                    ));
                };
                if !digits.contains(&d) {
                    digits.push(d);
                }
            }
            Some(digits)
        }
    };
    let keepalive_secs = match &raw.keepalive_secs {
        None => DEFAULT_MQTT_KEEPALIVE_SECS,
        Some(k) if (MIN_MQTT_KEEPALIVE_SECS..=MAX_MQTT_KEEPALIVE_SECS).contains(k.get_ref()) => {
            *k.get_ref()
        }
        Some(k) => {
            return Err(err(
                k.span(),
                format!(
                    "mqtt.keepalive_secs must be {MIN_MQTT_KEEPALIVE_SECS} to {MAX_MQTT_KEEPALIVE_SECS}"
                ),
            ));
        }
    };
    Ok(Some(MqttConfig {
        url: url.clone(),
        host,
        port,
        tls,
        ca_file,
        username,
        password_file,
        client_id,
        topic_prefix,
        discovery_prefix,
        node_id,
        contacts,
        keepalive_secs,
    }))
}

/// Checks what `[mqtt]` names on disk: the password file and the CA file must be readable.
pub(super) fn check_files(mqtt: Option<&MqttConfig>) -> Result<(), ConfigError> {
    let Some(m) = mqtt else { return Ok(()) };
    if let Some(p) = &m.password_file {
        read_password(p).map_err(|e| ConfigError {
            line: None,
            message: format!("mqtt.password_file {}: {e}", p.display()),
        })?;
    }
    if let Some(p) = &m.ca_file {
        crate::tls::client_config(&crate::tls::Pin::CaFile(p.clone())).map_err(|e| {
            ConfigError {
                line: None,
                message: format!("mqtt.ca_file {}: {e}", p.display()),
            }
        })?;
    }
    Ok(())
}

/// Longest password read from `password_file`, in bytes.
pub const MAX_MQTT_PASSWORD_BYTES: u64 = 1024;

/// The password in `path`: its first line, without the line end. Refuses an empty one and a
/// file over [`MAX_MQTT_PASSWORD_BYTES`].
pub fn read_password(path: &std::path::Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_MQTT_PASSWORD_BYTES {
        return Err(format!(
            "the file is {} bytes, over the limit of {MAX_MQTT_PASSWORD_BYTES}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("the first line (the password) is empty".into());
    }
    Ok(line.to_string())
}

/// Renders `[mqtt]` so that it parses back to the same config.
pub(super) fn render(f: &mut std::fmt::Formatter<'_>, m: Option<&MqttConfig>) -> std::fmt::Result {
    let Some(m) = m else { return Ok(()) };
    let q = super::toml_string;
    let path = |p: &PathBuf| q(&p.to_string_lossy());
    writeln!(f)?;
    writeln!(f, "[mqtt]")?;
    writeln!(f, "url = {}", q(&m.url))?;
    if let Some(c) = &m.ca_file {
        writeln!(f, "ca_file = {}", path(c))?;
    }
    if let Some(u) = &m.username {
        writeln!(f, "username = {}", q(u))?;
    }
    if let Some(p) = &m.password_file {
        writeln!(f, "password_file = {}", path(p))?;
    }
    writeln!(f, "client_id = {}", q(&m.client_id))?;
    writeln!(f, "topic_prefix = {}", q(&m.topic_prefix))?;
    writeln!(f, "discovery_prefix = {}", q(&m.discovery_prefix))?;
    writeln!(f, "node_id = {}", q(&m.node_id))?;
    if let Some(list) = &m.contacts {
        let items: Vec<String> = list.iter().map(|d| q(&format!("+{d}"))).collect();
        writeln!(f, "contacts = [{}]", items.join(", "))?;
    }
    writeln!(f, "keepalive_secs = {}", m.keepalive_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[account]\nintegrator = \"acme\"\nuser = \"home.1\"\ntoken = \"t\"\n\n[gatekeeper]\naddress = \"127.0.0.1:5222\"\nca_file = \"ca.pem\"\n";

    fn p(extra: &str) -> Result<Option<MqttConfig>, ConfigError> {
        crate::config::parse(
            &format!("{GOOD}\n{extra}"),
            std::path::Path::new("/etc/i/c.conf"),
        )
        .map(|c| c.mqtt)
    }

    #[test]
    fn a_minimal_section_gets_the_documented_defaults() {
        let m = p("[mqtt]\nurl = \"mqtt://127.0.0.1\"\n").unwrap().unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls), ("127.0.0.1", 1883, false));
        assert_eq!(m.topic_prefix, "interopd");
        assert_eq!(m.discovery_prefix, "homeassistant");
        assert!(!m.node_id.is_empty() && valid_topic_part(&m.node_id, false));
        assert_eq!(m.client_id, format!("interopd-{}", m.node_id));
        assert_eq!(m.contacts, None);
        assert_eq!(m.keepalive_secs, DEFAULT_MQTT_KEEPALIVE_SECS);
        assert_eq!(m.base_topic(), format!("interopd/{}", m.node_id));
        assert_eq!(p("").unwrap(), None);
    }

    #[test]
    fn every_key_parses_and_paths_resolve_beside_the_config() {
        let m = p("[mqtt]\nurl = \"mqtts://broker.lan:8884\"\nca_file = \"ca.pem\"\nusername = \"ha\"\npassword_file = \"pw\"\nclient_id = \"gw1\"\ntopic_prefix = \"home/im\"\ndiscovery_prefix = \"ha\"\nnode_id = \"flat_3\"\ncontacts = [\"+15550100\", \"+15550100\", \"+4915112345678\"]\nkeepalive_secs = 60\n")
            .unwrap()
            .unwrap();
        assert_eq!((m.host.as_str(), m.port, m.tls), ("broker.lan", 8884, true));
        assert_eq!(m.ca_file, Some(PathBuf::from("/etc/i/ca.pem")));
        assert_eq!(m.password_file, Some(PathBuf::from("/etc/i/pw")));
        assert_eq!(m.base_topic(), "home/im/flat_3");
        assert_eq!(
            m.contacts,
            Some(vec!["15550100".to_string(), "4915112345678".to_string()])
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key_and_its_line() {
        for (extra, needle) in [
            ("url = \"http://x\"", "mqtt.url"),
            ("url = \"mqtt://\"", "mqtt.url"),
            ("url = \"mqtt://x:0\"", "mqtt.url"),
            ("url = \"mqtts://x\"", "ca_file"),
            ("url = \"mqtt://x\"\nca_file = \"c\"", "mqtts"),
            (
                "url = \"mqtt://x\"\npassword_file = \"p\"",
                "needs mqtt.username",
            ),
            (
                "url = \"mqtt://x\"\ntopic_prefix = \"a/+\"",
                "mqtt.topic_prefix",
            ),
            (
                "url = \"mqtt://x\"\ntopic_prefix = \"/a\"",
                "mqtt.topic_prefix",
            ),
            ("url = \"mqtt://x\"\nnode_id = \"a/b\"", "mqtt.node_id"),
            ("url = \"mqtt://x\"\ncontacts = [\"0049\"]", "mqtt.contacts"),
            ("url = \"mqtt://x\"\nkeepalive_secs = 1", "keepalive_secs"),
            ("url = \"mqtt://x\"\nretain = true", "unknown field"),
        ] {
            let e = p(&format!("[mqtt]\n{extra}\n")).unwrap_err();
            assert!(e.message.contains(needle), "{extra}: {e}");
            assert!(e.line.is_some(), "{extra}: {e}");
        }
    }

    #[test]
    fn a_rendered_mqtt_section_parses_back_to_the_same_config() {
        for extra in [
            "[mqtt]\nurl = \"mqtt://127.0.0.1\"\n",
            "[mqtt]\nurl = \"mqtts://[::1]:8884/\"\nca_file = \"/etc/i/ca.pem\"\nusername = \"h\\\"a\"\npassword_file = \"/etc/i/pw\"\ncontacts = []\nkeepalive_secs = 600\n",
            "[mqtt]\nurl = \"mqtt://b\"\ncontacts = [\"+15550100\"]\ntopic_prefix = \"a/b\"\n",
        ] {
            let path = std::path::Path::new("/etc/i/c.conf");
            let c = crate::config::parse(&format!("{GOOD}\n{extra}"), path).unwrap();
            assert!(c.mqtt.is_some());
            assert_eq!(
                crate::config::parse(&c.to_string(), path).unwrap(),
                c,
                "{extra}"
            );
        }
    }

    #[test]
    fn urls_split_into_host_port_and_tls() {
        assert_eq!(parse_mqtt_url("mqtt://h"), Some(("h".into(), 1883, false)));
        assert_eq!(parse_mqtt_url("mqtts://h/"), Some(("h".into(), 8883, true)));
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:9"),
            Some(("::1".into(), 9, false))
        );
        for bad in [
            "mqtt://h:x",
            "mqtt://h/p",
            "tcp://h",
            "mqtt://a b",
            "mqtt://[::1",
        ] {
            assert_eq!(parse_mqtt_url(bad), None, "{bad}");
        }
        assert_eq!(default_node_id("acme-flat.3"), "acme-flat_3");
    }

    #[test]
    fn the_password_is_the_first_line_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_password(&f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_password(&f).is_err());
        assert!(read_password(&dir.path().join("none")).is_err());
    }
}
