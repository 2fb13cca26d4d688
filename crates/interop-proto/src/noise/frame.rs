//! The `wa` byte stream: the client's 4-byte prologue, once, then frames of a 3-byte
//! big-endian length and that many bytes. It owns the incremental reader; it knows nothing of
//! what the frames hold. No I/O: the shell pushes what the socket gave and pulls whole frames.

use super::NoiseError;

/// What the client sends once, before its first frame: `'W','A'`, then 6 and the node
/// dictionary version 3. It is also the Noise prologue.
pub const WA_PROLOGUE: [u8; 4] = [b'W', b'A', 6, 3];

/// Largest frame body the 3-byte length can state, in bytes (2^24 - 1).
pub const MAX_WA_FRAME_BYTES: usize = (1 << 24) - 1;

/// Length of the frame header, in bytes.
pub const FRAME_HEADER_BYTES: usize = 3;

/// `payload` with its 3-byte length in front.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
    let len = payload.len();
    if len > MAX_WA_FRAME_BYTES {
        return Err(NoiseError::ApiMisuse {
            detail: "frame body longer than 2^24 - 1 bytes",
        });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + len);
    // The check above keeps `len` below 2^24, so these three bytes are all of it.
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The incremental frame reader. Push bytes as they arrive, then call
/// [`FrameReader::next_frame`] until it says it needs more (`Ok(None)`). It holds at most one
/// partial frame beyond what the caller has not pulled yet.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// How many prologue bytes are still to be checked (4 on the server side, then 0).
    prologue_left: usize,
    max_frame_bytes: usize,
    failed: Option<NoiseError>,
}

impl FrameReader {
    /// The server's reader: the stream must begin with [`WA_PROLOGUE`]. `max_frame_bytes` is
    /// capped at [`MAX_WA_FRAME_BYTES`].
    pub fn expecting_prologue(max_frame_bytes: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            prologue_left: WA_PROLOGUE.len(),
            max_frame_bytes: max_frame_bytes.min(MAX_WA_FRAME_BYTES),
            failed: None,
        }
    }

    /// The client's reader: the server sends frames only.
    pub fn frames_only(max_frame_bytes: usize) -> FrameReader {
        FrameReader {
            prologue_left: 0,
            ..FrameReader::expecting_prologue(max_frame_bytes)
        }
    }

    /// The bound this reader enforces, in bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed but not yet returned as a frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes pushed but not yet returned, for a reader with another bound (the
    /// handshake's frames are smaller than the stanzas after it).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.buf)
    }

    /// The next whole frame body, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable and every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, NoiseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_frame_inner() {
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    fn next_frame_inner(&mut self) -> Result<Option<Vec<u8>>, NoiseError> {
        if self.prologue_left > 0 {
            let done = WA_PROLOGUE.len() - self.prologue_left;
            let have = self.buf.len().min(self.prologue_left);
            let expected = WA_PROLOGUE.get(done..done + have);
            if self.buf.get(..have) != expected {
                return Err(NoiseError::PeerBadPrologue);
            }
            self.buf.drain(..have);
            self.prologue_left -= have;
            if self.prologue_left > 0 {
                return Ok(None);
            }
        }
        let Some(&[a, b, c]) = self.buf.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
        if len > self.max_frame_bytes {
            return Err(NoiseError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let end = FRAME_HEADER_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = self.buf.get(FRAME_HEADER_BYTES..end).map(<[u8]>::to_vec);
        self.buf.drain(..end);
        Ok(body)
    }
}
