//! Fuzzes the receiving side of media crypto (`interop_proto::media_crypto`).
//!
//! Input layout: byte 0 picks the mode and media kind, byte 1 the chunk size, bytes 2..34 the
//! media key (zero-padded when the input is short), the rest is the blob or plaintext.
//! - mode 0: an arbitrary blob announced with its true fileEncSha256, so the MAC check runs;
//! - mode 1: an arbitrary blob with an arbitrary fileEncSha256 taken from the input;
//! - mode 2: the rest is a plaintext; it must round-trip through the streaming API in chunks,
//!   and the blob with one byte flipped must be rejected.
//!
//! Nothing may panic, and no arbitrary blob may pass the MAC check.
#![no_main]

use interop_proto::media_crypto::{
    Decryptor, Encryptor, MEDIA_KEY_BYTES, MediaCryptoError, MediaKind, Verifier, decrypt_all,
    encrypt_all,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const HEADER_BYTES: usize = 2 + MEDIA_KEY_BYTES;

fuzz_target!(|data: &[u8]| {
    let mut header = [0u8; HEADER_BYTES];
    let split = data.len().min(HEADER_BYTES);
    header[..split].copy_from_slice(&data[..split]);
    let rest = &data[split..];

    let kind = MediaKind::ALL[usize::from(header[0] & 0b11)];
    let mode = (header[0] >> 2) % 3;
    let chunk_len = usize::from(header[1]) + 1;
    let mut media_key = [0u8; MEDIA_KEY_BYTES];
    media_key.copy_from_slice(&header[2..]);

    match mode {
        0 => {
            let enc_sha: [u8; 32] = Sha256::digest(rest).into();
            let whole = decrypt_all(&media_key, kind, rest, &enc_sha, &[0; 32]);
            assert!(whole.is_err(), "an arbitrary blob passed the MAC check");
            let mut verifier = Verifier::new(&media_key, kind);
            for chunk in rest.chunks(chunk_len) {
                verifier.update(chunk);
            }
            let streamed = verifier.finish(&enc_sha).map(|_| ());
            assert_eq!(streamed.err(), whole.err());
        }
        1 => {
            let (enc_sha, blob) = rest.split_at(rest.len().min(32));
            let mut expected = [0u8; 32];
            expected[..enc_sha.len()].copy_from_slice(enc_sha);
            let _ = decrypt_all(&media_key, kind, blob, &expected, &expected);
        }
        _ => {
            let mut encryptor = Encryptor::new(&media_key, kind);
            let mut blob = Vec::new();
            for chunk in rest.chunks(chunk_len) {
                encryptor.update(chunk, &mut blob);
            }
            let summary = encryptor.finish(&mut blob);
            let (whole_blob, whole_summary) = encrypt_all(&media_key, kind, rest);
            assert_eq!(blob, whole_blob);
            assert_eq!(summary, whole_summary);

            let mut verifier = Verifier::new(&media_key, kind);
            for chunk in blob.chunks(chunk_len) {
                verifier.update(chunk);
            }
            let verified = verifier.finish(&summary.file_enc_sha256);
            let mut decryptor = Decryptor::new(verified.expect("own blob verifies"));
            let mut plaintext = Vec::new();
            for chunk in blob.chunks(chunk_len) {
                decryptor.update(chunk, &mut plaintext);
            }
            let length = decryptor.finish(&summary.file_sha256, &mut plaintext);
            assert_eq!(length, Ok(summary.file_length));
            assert_eq!(plaintext, rest);

            let at = chunk_len % blob.len();
            blob[at] ^= 0x80;
            assert_eq!(
                decrypt_all(
                    &media_key,
                    kind,
                    &blob,
                    &summary.file_enc_sha256,
                    &summary.file_sha256
                ),
                Err(MediaCryptoError::EncSha256Mismatch)
            );
        }
    }
});
