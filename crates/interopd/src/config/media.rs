//! `[media]`: the media host and the lifetimes and quota of blobs, as the config sets them
//! (docs/config.md). Parsing only: whether the certificate files exist is the shell's check.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    ConfigError, DEFAULT_MEDIA_BLOB_EXPIRY_SECS, DEFAULT_MEDIA_QUOTA_BYTES,
    DEFAULT_MEDIA_RETENTION_SECS, MAX_MEDIA_LIFETIME_SECS, MAX_MEDIA_PUBLIC_URL_BYTES,
    MIN_MEDIA_LIFETIME_SECS, MIN_MEDIA_QUOTA_BYTES, MediaConfig, S, line_of,
    parse_media_public_url,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    listen: Option<S<String>>,
    public_url: Option<S<String>>,
    cert_file: Option<S<String>>,
    key_file: Option<S<String>>,
    blob_expiry_secs: Option<S<u64>>,
    retention_secs: Option<S<u64>>,
    quota_bytes: Option<S<u64>>,
}

/// Step 2 for `[media]`.
pub(super) fn parse(
    raw: &RawMedia,
    text: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MediaConfig, ConfigError> {
    let err = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    let listen = match &raw.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
            err(
                l.span(),
                format!(
                    "media.listen {:?} must be an IP address and port",
                    l.get_ref()
                ),
            )
        })?),
    };
    let public_url = match (&raw.listen, &raw.public_url) {
        (Some(l), None) => {
            return Err(err(
                l.span(),
                "media.public_url (https://host:port) is required when media.listen is set".into(),
            ));
        }
        (_, Some(u)) => {
            if parse_media_public_url(u.get_ref()).is_none() {
                return Err(err(
                    u.span(),
                    format!(
                        "media.public_url {:?} must be https://host:port (at most {MAX_MEDIA_PUBLIC_URL_BYTES} bytes, no path)",
                        u.get_ref()
                    ),
                ));
            }
            let url = u.get_ref();
            Some(url.strip_suffix('/').unwrap_or(url).to_string())
        }
        (None, None) => None,
    };
    for (key, value) in [
        ("public_url", raw.public_url.as_ref().map(|v| v.span())),
        ("cert_file", raw.cert_file.as_ref().map(|v| v.span())),
        ("key_file", raw.key_file.as_ref().map(|v| v.span())),
    ] {
        if let (None, Some(span)) = (&listen, value) {
            return Err(err(
                span,
                format!("media.{key} has no effect without media.listen"),
            ));
        }
    }
    let (cert_file, key_file) = match (&raw.cert_file, &raw.key_file) {
        (Some(c), Some(k)) => {
            if c.get_ref().is_empty() || k.get_ref().is_empty() {
                return Err(err(
                    c.span(),
                    "media.cert_file and media.key_file must not be empty".into(),
                ));
            }
            (Some(resolve(c.get_ref())), Some(resolve(k.get_ref())))
        }
        (None, None) => (None, None),
        (Some(v), None) | (None, Some(v)) => {
            return Err(err(
                v.span(),
                "set both media.cert_file and media.key_file, or neither (for a self-signed certificate)".into(),
            ));
        }
    };
    let lifetime = |v: &Option<S<u64>>, key: &str, default: u64| match v {
        None => Ok(default),
        Some(s) if (MIN_MEDIA_LIFETIME_SECS..=MAX_MEDIA_LIFETIME_SECS).contains(s.get_ref()) => {
            Ok(*s.get_ref())
        }
        Some(s) => Err(err(
            s.span(),
            format!(
                "media.{key} must be {MIN_MEDIA_LIFETIME_SECS} to {MAX_MEDIA_LIFETIME_SECS} seconds"
            ),
        )),
    };
    let blob_expiry_secs = lifetime(
        &raw.blob_expiry_secs,
        "blob_expiry_secs",
        DEFAULT_MEDIA_BLOB_EXPIRY_SECS,
    )?;
    let retention_secs = lifetime(
        &raw.retention_secs,
        "retention_secs",
        DEFAULT_MEDIA_RETENTION_SECS,
    )?;
    let quota_bytes = match &raw.quota_bytes {
        None => DEFAULT_MEDIA_QUOTA_BYTES,
        Some(q) if *q.get_ref() >= MIN_MEDIA_QUOTA_BYTES => *q.get_ref(),
        Some(q) => {
            return Err(err(
                q.span(),
                format!("media.quota_bytes must be at least {MIN_MEDIA_QUOTA_BYTES}"),
            ));
        }
    };
    Ok(MediaConfig {
        listen,
        public_url,
        cert_file,
        key_file,
        blob_expiry_secs,
        retention_secs,
        quota_bytes,
    })
}
