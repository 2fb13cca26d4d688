//! Fuzzes the framer (`interop_proto::frame`) with an arbitrary byte stream cut into
//! arbitrary pieces.
//!
//! Input layout: byte 0 says how many of the following bytes (0..=15) are chunk sizes;
//! each chunk size is that byte plus one, used in turn, cycling; the rest is the stream.
//! The stream is pushed piece by piece, draining frames after every push, as the shell
//! does. Checks:
//! - nothing panics and the decoder never buffers more than its bound;
//! - the frames and the final outcome are the same as for the stream pushed in one go;
//! - every frame re-encodes to exactly the bytes it came from: re-encoded frames plus
//!   what is still buffered give back the stream (up to the point of failure).
#![no_main]

use interop_proto::frame::{FrameDecoder, FrameError, MAX_DECODER_BUFFER_BYTES, encode_frame};
use libfuzzer_sys::fuzz_target;

/// Pushes `stream` in pieces of the given sizes; returns the frames, the error that
/// stopped decoding (if any) and the bytes left buffered.
fn decode(stream: &[u8], sizes: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut turn = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        turn += 1;
        let (mut piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        while !piece.is_empty() {
            let taken = decoder.push(piece);
            piece = &piece[taken..];
            assert!(decoder.buffered_bytes() <= MAX_DECODER_BUFFER_BYTES);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => return (frames, Some(error), decoder.buffered_bytes()),
                }
            }
        }
    }
    (frames, None, decoder.buffered_bytes())
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, tail)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 0x0F).min(tail.len());
    let (size_bytes, stream) = tail.split_at(count);
    let sizes: Vec<usize> = size_bytes.iter().map(|&b| usize::from(b) + 1).collect();

    let (frames, error, buffered) = decode(stream, &sizes);
    let (whole_frames, whole_error, whole_buffered) = decode(stream, &[]);
    assert_eq!(
        frames, whole_frames,
        "frames depend on how the stream was split"
    );
    assert_eq!(
        error, whole_error,
        "outcome depends on how the stream was split"
    );

    let mut reencoded = Vec::new();
    for frame in &frames {
        if let Err(err) = encode_frame(frame, &mut reencoded) {
            panic!("a decoded frame failed to re-encode: {err}");
        }
    }
    assert!(
        stream.starts_with(&reencoded),
        "frames do not re-encode to their bytes"
    );
    if error.is_none() {
        assert_eq!(buffered, whole_buffered);
        assert_eq!(
            reencoded.len() + buffered,
            stream.len(),
            "bytes were lost or invented"
        );
    }
});
