//! The framer of wire profile `interop-xml/1`: cuts a byte stream into frames and
//! puts frames back into one.
//!
//! A frame is a 3-byte big-endian length followed by exactly that many payload bytes,
//! and the payload is one UTF-8 XML element (parsed by [`crate::stanza`], not here).
//! This file owns only the length prefix, the size bound and the reassembly buffer.
//! It is a sans-I/O core: no I/O, no clock, no randomness. The shell pushes whatever
//! bytes the socket gave it and pulls whole frames out; "need more bytes" is the value
//! `Ok(None)`, never an error.
//!
//! ```text
//!  +--------+--------+--------+------------------------------+
//!  | len>>16| len>>8 |  len   |  payload: `len` bytes        |   1 <= len <= MAX_FRAME_BYTES
//!  +--------+--------+--------+------------------------------+
//! ```
//!
//! Decisions:
//! - A declared length above [`MAX_FRAME_BYTES`] is refused as soon as the 3 header
//!   bytes are buffered; the body is never waited for. Media never travels inline.
//! - A zero-length frame is refused ([`FrameError::EmptyFrame`]): a frame carries one
//!   element, and an empty one carries none. Keep-alives are stanzas, not empty frames.
//! - The decoder holds at most [`MAX_DECODER_BUFFER_BYTES`]; [`FrameDecoder::push`]
//!   takes only what fits and says how much it took.
//! - After the first error the decoder is failed for good: it returns the same error
//!   again and discards further input. The shell closes the connection with
//!   [`FrameError::reason`].

use std::collections::VecDeque;
use std::fmt;

/// Largest payload one frame may carry, in bytes (the length prefix not counted).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Size of the big-endian length prefix, in bytes.
pub const FRAME_HEADER_BYTES: usize = 3;

/// Most bytes a [`FrameDecoder`] ever buffers: one header and one largest payload.
pub const MAX_DECODER_BUFFER_BYTES: usize = MAX_FRAME_BYTES + FRAME_HEADER_BYTES;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The peer declared a payload longer than [`MAX_FRAME_BYTES`]. The shell closes
    /// the connection with reason `frame_too_large`.
    FrameTooLarge {
        /// The length the header declared, in bytes.
        declared_bytes: u32,
    },
    /// The peer sent a frame whose declared length is zero. The shell closes the
    /// connection with reason `empty_frame`.
    EmptyFrame,
    /// Our caller asked to encode a payload longer than [`MAX_FRAME_BYTES`]: a bug
    /// or an unbounded stanza upstream. Nothing was written.
    PayloadTooLarge {
        /// The payload length that was refused, in bytes.
        len_bytes: usize,
    },
    /// Our caller asked to encode an empty payload: a bug upstream. Nothing was written.
    PayloadEmpty,
}

impl FrameError {
    /// A short `snake_case` code for the closing `<stream:error>` or a log line.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::FrameTooLarge { .. } => "frame_too_large",
            FrameError::EmptyFrame => "empty_frame",
            FrameError::PayloadTooLarge { .. } => "payload_too_large",
            FrameError::PayloadEmpty => "payload_empty",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::FrameTooLarge { declared_bytes } => write!(
                f,
                "peer declared a {declared_bytes}-byte frame, over the {MAX_FRAME_BYTES}-byte limit"
            ),
            FrameError::EmptyFrame => f.write_str("peer sent a zero-length frame"),
            FrameError::PayloadTooLarge { len_bytes } => write!(
                f,
                "refusing to frame a {len_bytes}-byte payload, over the {MAX_FRAME_BYTES}-byte limit"
            ),
            FrameError::PayloadEmpty => f.write_str("refusing to frame an empty payload"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one frame carrying `payload` to `out`.
///
/// Fails, leaving `out` untouched, when `payload` is empty or longer than
/// [`MAX_FRAME_BYTES`].
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::PayloadEmpty);
    }
    if payload.len() > MAX_FRAME_BYTES {
        return Err(FrameError::PayloadTooLarge {
            len_bytes: payload.len(),
        });
    }
    // MAX_FRAME_BYTES < 2^24, so the length fits the three low bytes of a u32.
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::PayloadTooLarge {
        len_bytes: payload.len(),
    })?;
    let [_, b0, b1, b2] = len.to_be_bytes();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&[b0, b1, b2]);
    out.extend_from_slice(payload);
    Ok(())
}

/// Reassembles frames from a byte stream split anywhere.
///
/// Feed it with [`push`](Self::push), then call [`next_frame`](Self::next_frame) until
/// it returns `Ok(None)`; repeat while input remains:
///
/// ```
/// # use interop_proto::frame::{FrameDecoder, FrameError};
/// # fn handle(_: Vec<u8>) {}
/// # fn main() -> Result<(), FrameError> {
/// let mut decoder = FrameDecoder::new();
/// let mut input: &[u8] = b"\x00\x00\x04<a/>\x00\x00\x04<b/>";
/// while !input.is_empty() {
///     let taken = decoder.push(input);
///     input = input.get(taken..).unwrap_or_default();
///     while let Some(frame) = decoder.next_frame()? {
///         handle(frame);
///     }
/// }
/// # Ok(())
/// # }
/// ```
///
/// The loop always progresses: once `next_frame` has returned `Ok(None)`, the buffer
/// holds less than one whole frame, so `push` takes at least one byte.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes received and not yet handed out; never longer than
    /// [`MAX_DECODER_BUFFER_BYTES`].
    buffer: VecDeque<u8>,
    /// The first error seen; once set, the decoder only repeats it.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers as much of `bytes` as fits under [`MAX_DECODER_BUFFER_BYTES`] and
    /// returns how many bytes it took, counted from the front of `bytes`.
    ///
    /// Offer the rest again after draining frames with [`next_frame`](Self::next_frame).
    /// A failed decoder takes and discards everything.
    #[must_use = "bytes beyond the returned count were not buffered"]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.failed.is_some() {
            return bytes.len();
        }
        let room = MAX_DECODER_BUFFER_BYTES.saturating_sub(self.buffer.len());
        let taken = bytes.len().min(room);
        if let Some(accepted) = bytes.get(..taken) {
            self.buffer.extend(accepted);
        }
        taken
    }

    /// The next whole frame's payload, `Ok(None)` when more bytes are needed, or the
    /// reason the stream must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let (Some(&b0), Some(&b1), Some(&b2)) =
            (self.buffer.front(), self.buffer.get(1), self.buffer.get(2))
        else {
            return Ok(None);
        };
        let declared_bytes = u32::from_be_bytes([0, b0, b1, b2]);
        let len = usize::try_from(declared_bytes).unwrap_or(usize::MAX);
        let refusal = if len == 0 {
            Some(FrameError::EmptyFrame)
        } else if len > MAX_FRAME_BYTES {
            Some(FrameError::FrameTooLarge { declared_bytes })
        } else {
            None
        };
        if let Some(error) = refusal {
            self.failed = Some(error);
            self.buffer = VecDeque::new();
            return Err(error);
        }
        if self.buffer.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        // INVARIANT: the buffer holds at least FRAME_HEADER_BYTES + len bytes (checked
        // just above), so neither drain range runs past its end.
        self.buffer.drain(..FRAME_HEADER_BYTES);
        Ok(Some(self.buffer.drain(..len).collect()))
    }

    /// How many bytes are buffered but not yet handed out as frames. At end of stream,
    /// a non-zero value means the peer stopped mid-frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The error that failed this decoder, if any.
    pub fn failure(&self) -> Option<FrameError> {
        self.failed
    }
}

/// Encodes a payload as one frame (for shells and tests).
pub fn framed(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES);
    encode_frame(payload, &mut out)?;
    Ok(out)
}

/// A frame decoder fed from a byte stream: the read side of a connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    decoder: FrameDecoder,
    pending: Vec<u8>,
}

impl FrameReader {
    /// Feeds bytes and returns every complete frame payload; an error means close.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            let taken = self.decoder.push(&self.pending);
            self.pending.drain(..taken.min(self.pending.len()));
            let mut progressed = false;
            while let Some(f) = self.decoder.next_frame()? {
                frames.push(f);
                progressed = true;
            }
            if self.pending.is_empty() || (!progressed && taken == 0) {
                break;
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pushes all of `input`, in one call per chunk, draining frames as it goes.
    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            loop {
                let taken = decoder.push(rest);
                rest = rest.get(taken..).unwrap_or_default();
                while let Some(frame) = decoder.next_frame()? {
                    frames.push(frame);
                }
                if rest.is_empty() {
                    break;
                }
            }
        }
        Ok(frames)
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            assert_eq!(encode_frame(payload, &mut out), Ok(()));
        }
        out
    }

    #[test]
    fn encode_writes_big_endian_three_byte_length_then_payload() {
        let mut out = vec![0xAA];
        assert_eq!(encode_frame(b"<iq/>", &mut out), Ok(()));
        assert_eq!(out, b"\xAA\x00\x00\x05<iq/>");
    }

    #[test]
    fn encode_accepts_exactly_max_frame_bytes() {
        let payload = vec![b'x'; MAX_FRAME_BYTES];
        let mut out = Vec::new();
        assert_eq!(encode_frame(&payload, &mut out), Ok(()));
        assert_eq!(out.get(..3), Some(&[0x04, 0x00, 0x00][..]));
        assert_eq!(out.len(), MAX_DECODER_BUFFER_BYTES);
    }

    #[test]
    fn encode_refuses_payload_over_max_and_leaves_output_untouched() {
        let payload = vec![b'x'; MAX_FRAME_BYTES + 1];
        let mut out = vec![1, 2];
        assert_eq!(
            encode_frame(&payload, &mut out),
            Err(FrameError::PayloadTooLarge {
                len_bytes: MAX_FRAME_BYTES + 1
            })
        );
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn encode_refuses_empty_payload() {
        let mut out = Vec::new();
        assert_eq!(encode_frame(b"", &mut out), Err(FrameError::PayloadEmpty));
        assert!(out.is_empty());
    }

    #[test]
    fn decoder_needs_more_bytes_until_the_frame_is_whole() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.push(b"\x00\x00"), 2);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.push(b"\x04<a/"), 4);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.push(b">"), 1);
        assert_eq!(decoder.next_frame(), Ok(Some(b"<a/>".to_vec())));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn decoder_yields_several_frames_from_one_push() {
        let stream = framed(&[b"<a/>", b"<bb/>", b"<ccc/>"]);
        assert_eq!(
            decode_all(&[&stream]),
            Ok(vec![
                b"<a/>".to_vec(),
                b"<bb/>".to_vec(),
                b"<ccc/>".to_vec()
            ])
        );
    }

    #[test]
    fn oversize_length_is_rejected_as_soon_as_the_header_arrives() {
        let mut decoder = FrameDecoder::new();
        // Declares MAX_FRAME_BYTES + 1 and sends no body at all.
        assert_eq!(decoder.push(&[0x04, 0x00, 0x01]), 3);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::FrameTooLarge {
                declared_bytes: 0x04_0001
            })
        );
    }

    #[test]
    fn largest_declarable_length_is_rejected() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(&[0xFF, 0xFF, 0xFF]), 3);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::FrameTooLarge {
                declared_bytes: 0xFF_FFFF
            })
        );
    }

    #[test]
    fn zero_length_frame_is_rejected_as_empty_frame() {
        assert_eq!(decode_all(&[b"\x00\x00\x00"]), Err(FrameError::EmptyFrame));
    }

    #[test]
    fn failed_decoder_repeats_its_error_and_discards_input() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.push(b"\x00\x00\x00"), 3);
        assert_eq!(decoder.next_frame(), Err(FrameError::EmptyFrame));
        assert_eq!(decoder.push(b"\x00\x00\x04<a/>"), 7);
        assert_eq!(decoder.next_frame(), Err(FrameError::EmptyFrame));
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.failure(), Some(FrameError::EmptyFrame));
    }

    #[test]
    fn frame_of_exactly_max_bytes_is_decoded() {
        let payload = vec![b'y'; MAX_FRAME_BYTES];
        let stream = framed(&[&payload, b"<a/>"]);
        assert_eq!(decode_all(&[&stream]), Ok(vec![payload, b"<a/>".to_vec()]));
    }

    #[test]
    fn push_takes_no_more_than_the_buffer_bound() {
        let mut decoder = FrameDecoder::new();
        let payload = vec![b'z'; MAX_FRAME_BYTES];
        let mut stream = framed(&[&payload]);
        stream.extend_from_slice(b"\x00\x00\x04<a/>");
        assert_eq!(decoder.push(&stream), MAX_DECODER_BUFFER_BYTES);
        assert_eq!(decoder.buffered_bytes(), MAX_DECODER_BUFFER_BYTES);
        assert_eq!(decoder.push(b"more"), 0);
        assert_eq!(decoder.next_frame(), Ok(Some(payload)));
        assert_eq!(decoder.push(b"\x00\x00\x04<a/>"), 7);
        assert_eq!(decoder.next_frame(), Ok(Some(b"<a/>".to_vec())));
    }

    #[test]
    fn stored_oversize_length_header_sample_is_rejected() {
        let sample = include_bytes!("../../../tests/data/frames/oversize_length_header.bin");
        assert_eq!(
            decode_all(&[sample]),
            Err(FrameError::FrameTooLarge {
                declared_bytes: 0xFF_FFFF
            })
        );
    }

    #[test]
    fn stored_zero_length_frame_sample_is_rejected() {
        let sample = include_bytes!("../../../tests/data/frames/zero_length_frame.bin");
        assert_eq!(decode_all(&[sample]), Err(FrameError::EmptyFrame));
    }

    #[test]
    fn every_error_has_a_distinct_snake_case_reason() {
        let errors = [
            FrameError::FrameTooLarge { declared_bytes: 1 },
            FrameError::EmptyFrame,
            FrameError::PayloadTooLarge { len_bytes: 1 },
            FrameError::PayloadEmpty,
        ];
        let mut reasons: Vec<&str> = errors.iter().map(FrameError::reason).collect();
        for reason in &reasons {
            assert!(
                reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), errors.len());
    }

    fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..12)
    }

    proptest! {
        #[test]
        fn decoded_frames_do_not_depend_on_how_the_stream_is_split(
            payloads in payloads(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let stream = framed(&refs);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let chunks: Vec<&[u8]> = points
                .windows(2)
                .filter_map(|w| match w {
                    [a, b] => stream.get(*a..*b),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(decode_all(&chunks), Ok(payloads));
        }

        #[test]
        fn decoder_never_panics_and_reencodes_what_it_yields(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let stream: Vec<u8> = chunks.concat();
            if let Ok(frames) = decode_all(&refs) {
                let again: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                let reencoded = framed(&again);
                prop_assert!(stream.starts_with(&reencoded));
            }
        }
    }
}
