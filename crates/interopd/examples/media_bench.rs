//! Encrypt-and-store throughput of the media send pipeline, against OpenSSL on the same file
//! in the same run (method and results: docs/bench-media.md).
//!
//! ```sh
//! cargo run --release --example media_bench -- [MIB] [ROUNDS]    # defaults: 256 MiB, 3 rounds
//! ```
//!
//! It makes a file of `MIB` MiB of pseudo-random bytes in a temporary directory (so the page
//! cache holds it for every contender), then times, `ROUNDS` times each and interleaved:
//!
//! - `interopd Encryptor`: 64 KiB reads → `media_crypto::Encryptor::update` (AES-256-CBC,
//!   HMAC-SHA256, SHA-256 of plaintext and of blob) → file write; `finish`.
//! - `interopd Encryptor, memory`: the same crypto over the file read into memory first,
//!   timing only the crypto (no reads, no writes).
//! - `interopd encrypt_body`: the route's own pipe, `media_pipe::encrypt_body` (kind `file`,
//!   so no probes) from the file into a blob file.
//! - `openssl enc+hmac`: `openssl enc -aes-256-cbc` to a file, then `openssl dgst -sha256
//!   -hmac` of that file.
//! - `openssl enc+hmac+2×sha256`: the same plus `openssl dgst -sha256` of the plaintext and
//!   of the ciphertext, which is the work interopd does (it hashes both for the message).
//!
//! None of them fsyncs inside the timed run; one `sync_all` of an interopd blob is timed on
//! its own, since `MediaStore::persist` adds it once per upload. The key and IV are fixed:
//! this measures speed, nothing here is secret. Reports the median of the rounds in MiB/s
//! and the ratio of each interopd contender to each OpenSSL one.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use interopd::media_crypto::{Encryptor, MEDIA_CHUNK_BYTES, MEDIA_KEY_BYTES, MediaKind};
use interopd::media_pipe::{self, SendKind};

const MIB: u64 = 1024 * 1024;
const DEFAULT_MIB: u64 = 256;
const DEFAULT_ROUNDS: usize = 3;
const MEDIA_KEY: [u8; MEDIA_KEY_BYTES] = [0x42; MEDIA_KEY_BYTES];
const OPENSSL_KEY_HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
const OPENSSL_IV_HEX: &str = "24242424242424242424242424242424";
const OPENSSL_HMAC_KEY: &str = "0123456789abcdef0123456789abcdef";

fn write_noise(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

fn interopd_encryptor(input: &Path, output: &Path) -> std::io::Result<u64> {
    let mut inp = File::open(input)?;
    let mut out = File::create(output)?;
    let mut enc = Encryptor::new(&MEDIA_KEY, MediaKind::Document);
    let mut buf = vec![0u8; MEDIA_CHUNK_BYTES];
    let mut sealed = Vec::with_capacity(MEDIA_CHUNK_BYTES + 32);
    loop {
        let n = inp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sealed.clear();
        enc.update(&buf[..n], &mut sealed);
        out.write_all(&sealed)?;
    }
    sealed.clear();
    let summary = enc.finish(&mut sealed);
    out.write_all(&sealed)?;
    Ok(summary.blob_length)
}

/// The crypto alone: the same Encryptor over the same bytes, read once into memory first, no
/// output file. Shows how much of the pipeline's time is file I/O.
fn interopd_encryptor_in_memory(input: &Path, _output: &Path) -> std::io::Result<u64> {
    let mut inp = File::open(input)?;
    let mut plain = Vec::new();
    inp.read_to_end(&mut plain)?;
    let t0 = Instant::now();
    let mut enc = Encryptor::new(&MEDIA_KEY, MediaKind::Document);
    let mut sealed = Vec::with_capacity(MEDIA_CHUNK_BYTES + 32);
    for chunk in plain.chunks(MEDIA_CHUNK_BYTES) {
        sealed.clear();
        enc.update(chunk, &mut sealed);
    }
    sealed.clear();
    let summary = enc.finish(&mut sealed);
    CRYPTO_ONLY_NANOS.store(
        u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(summary.blob_length)
}

/// Time of the last in-memory run's crypto, without the read that loaded the file.
static CRYPTO_ONLY_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn interopd_encrypt_body(input: &Path, output: &Path) -> std::io::Result<u64> {
    let mut body = futures_lite::io::AssertAsync::new(File::open(input)?);
    let mut out = File::create(output)?;
    let facts = futures_lite::future::block_on(media_pipe::encrypt_body(
        &mut body,
        SendKind::File,
        media_pipe::MAX_FILE_BYTES,
        &MEDIA_KEY,
        &mut out,
    ))
    .map_err(std::io::Error::other)?;
    Ok(facts.blob_len)
}

fn openssl(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("openssl").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn openssl_enc_hmac(input: &Path, output: &Path, hash_both: bool) -> std::io::Result<u64> {
    let (i, o) = (input.to_string_lossy(), output.to_string_lossy());
    openssl(&[
        "enc",
        "-aes-256-cbc",
        "-K",
        OPENSSL_KEY_HEX,
        "-iv",
        OPENSSL_IV_HEX,
        "-in",
        &i,
        "-out",
        &o,
    ])?;
    openssl(&["dgst", "-sha256", "-hmac", OPENSSL_HMAC_KEY, &o])?;
    if hash_both {
        openssl(&["dgst", "-sha256", &i])?;
        openssl(&["dgst", "-sha256", &o])?;
    }
    Ok(std::fs::metadata(output)?.len())
}

type Contender = (&'static str, fn(&Path, &Path) -> std::io::Result<u64>);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_MIB);
    let rounds: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
        .max(1);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("plain.bin");
    let output = dir.path().join("blob.bin");
    write_noise(&input, mib * MIB)?;

    let contenders: [Contender; 5] = [
        ("interopd Encryptor", interopd_encryptor),
        ("interopd Encryptor, memory", interopd_encryptor_in_memory),
        ("interopd encrypt_body", interopd_encrypt_body),
        ("openssl enc+hmac", |i, o| openssl_enc_hmac(i, o, false)),
        ("openssl enc+hmac+2xsha256", |i, o| {
            openssl_enc_hmac(i, o, true)
        }),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (k, (name, run)) in contenders.iter().enumerate() {
            let _ = std::fs::remove_file(&output);
            let t0 = Instant::now();
            let blob = run(&input, &output)?;
            let mut took = t0.elapsed();
            if k == 1 {
                // Only the crypto counts for the in-memory contender.
                took = Duration::from_nanos(
                    CRYPTO_ONLY_NANOS.load(std::sync::atomic::Ordering::Relaxed),
                );
            }
            times[k].push(took);
            let want = (mib * MIB / 16 + 1) * 16;
            if blob != want && blob != want + 10 {
                return Err(std::io::Error::other(format!("{name}: {blob} bytes")));
            }
        }
    }
    let _ = std::fs::remove_file(&output);
    interopd_encryptor(&input, &output)?;
    let t0 = Instant::now();
    File::open(&output)?.sync_all()?;
    let fsync = t0.elapsed();

    println!(
        "{mib} MiB file, {rounds} rounds, median; fsync of one {mib} MiB blob: {:.0} ms",
        fsync.as_secs_f64() * 1000.0
    );
    let rates: Vec<f64> = times
        .into_iter()
        .map(|t| mib as f64 / median(t).as_secs_f64())
        .collect();
    for ((name, _), rate) in contenders.iter().zip(&rates) {
        println!("{name:<28} {rate:>8.1} MiB/s");
    }
    for (a, b) in [(0, 3), (0, 4), (2, 3), (2, 4)] {
        println!(
            "ratio {} / {}: {:.2}",
            contenders[a].0,
            contenders[b].0,
            rates[a] / rates[b]
        );
    }
    Ok(())
}
