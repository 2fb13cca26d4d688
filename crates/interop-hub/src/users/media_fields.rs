//! Media as simulated users see it: the fields of a received media message, opening its
//! blob, and the records the control API shows.

use super::*;

pub(super) fn record_json(o: &Opened, now_ms: u64, media: &MediaOutcome) -> serde_json::Value {
    let kind = o.message.kind();
    let mut v = serde_json::json!({
        "id": o.id,
        "from": o.from.user,
        "t": now_ms / 1000,
        "kind": kind.as_str(),
    });
    if let Some(obj) = v.as_object_mut() {
        let m = &o.message;
        if let Some(text) = m.text_body() {
            obj.insert("text".into(), text.into());
        }
        if let Some(r) = &m.reaction_message {
            obj.insert("text".into(), r.text.clone().unwrap_or_default().into());
            if let Some(id) = r.key.as_ref().and_then(|k| k.id.clone()) {
                obj.insert("reply_to".into(), id.into());
            }
        }
        if let Some((id, text)) = m.edit_of() {
            obj.insert("edits".into(), id.into());
            obj.insert("text".into(), text.unwrap_or_default().into());
        }
        if let Some(id) = m.revoke_of() {
            obj.insert("revokes".into(), id.into());
        }
        if let Some(l) = &m.location_message {
            obj.insert(
                "location".into(),
                serde_json::json!({"lat": l.degrees_latitude, "lon": l.degrees_longitude, "name": l.name}),
            );
        }
    }
    if let Some((sha, size, mime)) = media_facts(&o.message)
        && let Some(obj) = v.as_object_mut()
    {
        let facts = match media {
            MediaOutcome::Declared => {
                serde_json::json!({"sha256_hex": sha, "size": size, "mimetype": mime})
            }
            MediaOutcome::Decrypted { sha256_hex, size } => {
                serde_json::json!({"sha256_hex": sha256_hex, "size": size, "mimetype": mime})
            }
            MediaOutcome::Failed { code } => serde_json::json!({"error": code}),
        };
        obj.insert("media".into(), facts);
    }
    v
}

/// The blob reference of a media message: `None` unless it names an `https` URL, a
/// 32-byte media key and both 32-byte hashes.
pub fn media_ref(m: &Message) -> Option<MediaRef> {
    if let Some(x) = &m.image_message {
        blob_ref(
            MediaKind::Image,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.video_message {
        blob_ref(
            MediaKind::Video,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.audio_message {
        blob_ref(
            MediaKind::Audio,
            &x.url,
            &x.mimetype,
            None,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else if let Some(x) = &m.document_message {
        let name = x.file_name.as_ref();
        blob_ref(
            MediaKind::Document,
            &x.url,
            &x.mimetype,
            name,
            &x.media_key,
            &x.file_enc_sha256,
            &x.file_sha256,
        )
    } else {
        None
    }
}

pub(super) fn blob_ref(
    kind: MediaKind,
    url: &Option<String>,
    mimetype: &Option<String>,
    file_name: Option<&String>,
    media_key: &Option<Vec<u8>>,
    file_enc_sha256: &Option<Vec<u8>>,
    file_sha256: &Option<Vec<u8>>,
) -> Option<MediaRef> {
    let url = url.as_ref().filter(|u| u.starts_with("https://"))?;
    Some(MediaRef {
        kind,
        url: url.clone(),
        mimetype: mimetype.clone().unwrap_or_default(),
        file_name: file_name.cloned(),
        media_key: media_key.as_deref()?.try_into().ok()?,
        file_enc_sha256: file_enc_sha256.as_deref()?.try_into().ok()?,
        file_sha256: file_sha256.as_deref()?.try_into().ok()?,
    })
}

/// Verifies a fetched blob against its media message, in the order DESIGN.md section 5
/// requires (fileEncSha256, MAC, decrypt, fileSha256), and returns the plaintext or the
/// error code `received` shows.
pub fn open_media(m: &Message, blob: &[u8]) -> Result<Vec<u8>, &'static str> {
    let r = media_ref(m).ok_or("bad_media_message")?;
    media_crypto::decrypt_all(
        &r.media_key,
        r.kind,
        blob,
        &r.file_enc_sha256,
        &r.file_sha256,
    )
    .map_err(media_error_code)
}

/// The `received` error code for a failed media check.
pub fn media_error_code(e: MediaCryptoError) -> &'static str {
    match e {
        MediaCryptoError::EncSha256Mismatch => "enc_sha256_mismatch",
        MediaCryptoError::BlobTooShort { .. } => "blob_too_short",
        MediaCryptoError::MacMismatch => "mac_mismatch",
        MediaCryptoError::LengthNotBlockAligned { .. } => "not_block_aligned",
        MediaCryptoError::BadPadding => "bad_padding",
        MediaCryptoError::FileSha256Mismatch => "file_sha256_mismatch",
        MediaCryptoError::BlobLengthChanged { .. } => "blob_length_changed",
    }
}

/// The `kind` the media store takes for a content kind.
pub(super) fn store_kind(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Voice => "voice",
        ContentKind::Audio => "audio",
        ContentKind::Video => "video",
        ContentKind::Document => "file",
        _ => "image",
    }
}

/// Declared plaintext hash, size and mimetype of a media message.
pub(super) fn media_facts(m: &Message) -> Option<(String, u64, String)> {
    let (sha, len, mime) = if let Some(x) = &m.image_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.video_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.audio_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else if let Some(x) = &m.document_message {
        (&x.file_sha256, x.file_length, &x.mimetype)
    } else {
        return None;
    };
    let hex: String = sha
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((hex, len.unwrap_or(0), mime.clone().unwrap_or_default()))
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Standard base64 (for JSON fields).
pub fn b64(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// The echo's answer in kind: `original` with everything that describes the media kept
/// (`seconds`, `ptt`, dimensions, caption, file name, …) and only where the blob lives and
/// how it is sealed (URL, direct path, media key, hashes, length, key timestamp) taken from
/// `fresh`, the same plaintext re-hosted in the hub's media store.
pub(super) fn rehosted(original: &Message, fresh: &Message) -> Message {
    macro_rules! take_blob {
        ($into:ident . $field:ident) => {
            if let (Some(out), Some(new)) = (&mut $into.$field, &fresh.$field) {
                out.url = new.url.clone();
                out.direct_path = new.direct_path.clone();
                out.media_key = new.media_key.clone();
                out.file_sha256 = new.file_sha256.clone();
                out.file_enc_sha256 = new.file_enc_sha256.clone();
                out.file_length = new.file_length;
                out.media_key_timestamp = new.media_key_timestamp;
            }
        };
    }
    let mut reply = original.clone();
    take_blob!(reply.image_message);
    take_blob!(reply.audio_message);
    take_blob!(reply.video_message);
    take_blob!(reply.document_message);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::content::AudioMessage;

    #[test]
    fn an_echoed_voice_note_keeps_its_seconds_and_takes_the_new_blob() {
        let original = Message {
            audio_message: Some(AudioMessage {
                url: Some("https://old/m/1".into()),
                mimetype: Some("audio/ogg; codecs=opus".into()),
                seconds: Some(7),
                ptt: Some(true),
                media_key: Some(vec![1; 32]),
                file_length: Some(100),
                ..AudioMessage::default()
            }),
            ..Message::default()
        };
        let fresh = Message {
            audio_message: Some(AudioMessage {
                url: Some("https://hub/media/2".into()),
                ptt: Some(true),
                media_key: Some(vec![2; 32]),
                file_length: Some(100),
                ..AudioMessage::default()
            }),
            ..Message::default()
        };
        let a = rehosted(&original, &fresh).audio_message.unwrap();
        assert_eq!(a.seconds, Some(7));
        assert_eq!(a.ptt, Some(true));
        assert_eq!(a.mimetype.as_deref(), Some("audio/ogg; codecs=opus"));
        assert_eq!(a.url.as_deref(), Some("https://hub/media/2"));
        assert_eq!(a.media_key, Some(vec![2; 32]));
    }
}
