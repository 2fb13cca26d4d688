//! Fuzzes the receiving side of the media pipe (`interopd::media_pipe`).
//!
//! Input layout: byte 0 picks the mode, the rest is the payload.
//! - mode 0: the payload is a content protobuf (padding is added); `media_ref` and `media_info` must agree on
//!   kind, mimetype and length whenever both answer, and a reference rebuilt with
//!   `media_message` must read back the same.
//! - mode 1: the payload is a blob, announced with its true fileEncSha256 (so the MAC check
//!   runs) and a key from its first bytes; `verify_and_decrypt` must refuse it without
//!   panicking, and must write nothing when the MAC fails.
//!
//! Nothing may panic.
#![no_main]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::OnceLock;

use interop_proto::content::decode_padded;
use interopd::media_pipe::{
    MediaRef, SendKind, UploadFacts, media_info, media_message, media_ref, verify_and_decrypt,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Two scratch files reused by every run of this process.
fn scratch() -> &'static (File, File) {
    static FILES: OnceLock<(File, File)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let open = |name: &str| {
            let path = dir.join(format!("media_pipe_verify-{pid}-{name}"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("scratch file");
            let _ = std::fs::remove_file(&path);
            f
        };
        (open("blob"), open("plain"))
    })
}

fn reset(mut f: &File) {
    f.set_len(0).expect("truncate scratch file");
    f.seek(SeekFrom::Start(0)).expect("rewind scratch file");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // One byte of padding makes the payload a padded content plaintext.
        let mut padded = payload.to_vec();
        padded.push(1);
        let Ok(msg) = decode_padded(&padded) else {
            return;
        };
        let info = media_info(&msg);
        let Some(r) = media_ref(&msg) else {
            return;
        };
        let info = info.expect("a media reference is media");
        assert_eq!(info.kind, r.kind);
        assert_eq!(info.mimetype, r.mimetype);
        assert_eq!(info.file_length, r.file_length);
        let facts = UploadFacts {
            media_key: r.media_key,
            file_sha256: r.file_sha256,
            file_enc_sha256: r.file_enc_sha256,
            file_length: r.file_length,
            blob_len: 0,
            width: r.width,
            height: r.height,
            seconds: r.seconds,
        };
        let caption = r
            .caption
            .as_deref()
            .filter(|_| !matches!(r.kind, SendKind::Voice | SendKind::Audio));
        let rebuilt = media_message(
            r.kind,
            &facts,
            &r.mimetype,
            r.url.as_deref().unwrap_or(""),
            r.direct_path.as_deref().unwrap_or(""),
            caption,
            r.filename.as_deref(),
            0,
        );
        let back = media_ref(&rebuilt).expect("a rebuilt reference reads back");
        assert_eq!(back.kind, r.kind);
        assert_eq!(back.media_key, r.media_key);
        assert_eq!(back.file_length, r.file_length);
    } else {
        let (blob_file, plain_file) = scratch();
        reset(blob_file);
        reset(plain_file);
        let mut key = [0u8; 32];
        let n = payload.len().min(32);
        key[..n].copy_from_slice(&payload[..n]);
        let kind = SendKind::ALL[usize::from(mode >> 1) % SendKind::ALL.len()];
        let r = MediaRef {
            kind,
            url: Some("https://h:1/m/1".into()),
            direct_path: None,
            media_key: key,
            file_sha256: [0; 32],
            file_enc_sha256: Sha256::digest(payload).into(),
            file_length: payload.len() as u64,
            mimetype: String::new(),
            filename: None,
            caption: None,
            seconds: None,
            width: None,
            height: None,
        };
        (&*blob_file)
            .write_all(payload)
            .expect("write scratch blob");
        let mut blob = blob_file.try_clone().expect("clone");
        let mut plain = plain_file.try_clone().expect("clone");
        assert!(verify_and_decrypt(&mut blob, &r, &mut plain).is_err());
    }
});
