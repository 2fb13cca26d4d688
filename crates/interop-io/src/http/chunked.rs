//! The chunked request-body decoder: sans-I/O, strict (CRLF line ends, bounded sizes and
//! extensions), fed whatever bytes arrived.

use super::*;

/// What one [`ChunkedDecoder::decode`] call did: it used `input[..consumed]`, and
/// `input[data]` (inside that) is body data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used, control and data alike.
    pub consumed: usize,
    /// Where the body data of this step lies in the input (possibly empty).
    pub data: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// In the hex digits of a chunk size; `digits` read so far.
    Size { digits: u8 },
    /// After the size, in extensions or whitespace, waiting for CR.
    Extension,
    /// Waiting for the LF that ends a size line.
    SizeLf,
    /// In chunk data.
    Data { remaining: u64 },
    /// Waiting for the CR after chunk data.
    DataCr,
    /// Waiting for the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line, waiting for CR.
    Trailer,
    /// Waiting for the LF that ends a trailer line.
    TrailerLf,
    /// Waiting for the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// The sans-I/O decoder of a `Transfer-Encoding: chunked` body.
///
/// Strict: line ends are CRLF, sizes are 1–16 hex digits, each size line is at most
/// [`MAX_CHUNK_LINE_BYTES`], the trailer section at most [`MAX_TRAILER_BYTES`] (and
/// dropped), and the data in total at most the cap given to [`ChunkedDecoder::new`]. It
/// stops exactly after the final CRLF, so a pipelined next request is left untouched.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    line_bytes: usize,
    trailer_bytes: usize,
    total_bytes: u64,
    max_body_bytes: u64,
}

impl ChunkedDecoder {
    /// A decoder that refuses more than `max_body_bytes` of data in total.
    pub fn new(max_body_bytes: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            total_bytes: 0,
            max_body_bytes,
        }
    }

    /// Whether the final chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Body data bytes decoded so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Decodes from `input`, returning at most one run of at most `max_data` data bytes.
    /// Uses every control byte it can; when it used all of `input` without finishing, it
    /// needs more. After an error the decoder must be dropped.
    pub fn decode(&mut self, input: &[u8], max_data: usize) -> Result<Decoded, HttpError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data { remaining } => {
                    let available = input.len() - i;
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(available)
                        .min(max_data);
                    if take == 0 {
                        break;
                    }
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        consumed: i + take,
                        data: i..i + take,
                    });
                }
                _ => {
                    self.step(b)?;
                    i += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: i,
            data: i..i,
        })
    }

    /// Advances over one control byte.
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let malformed = |what| Err(HttpError::MalformedChunk { what });
        match self.state {
            ChunkState::Size { digits } => match hex_value(b) {
                Some(value) => {
                    if digits == 16 {
                        return malformed("chunk size has more than 16 hex digits");
                    }
                    self.size = (self.size << 4) | u64::from(value);
                    self.state = ChunkState::Size { digits: digits + 1 };
                    self.line_bytes += 1;
                }
                None if digits == 0 => return malformed("chunk size is not hex"),
                None => return self.after_size(b),
            },
            ChunkState::Extension => self.after_size(b)?,
            ChunkState::SizeLf => {
                if b != b'\n' {
                    return malformed("chunk size line does not end in CRLF");
                }
                self.line_bytes = 0;
                if self.size == 0 {
                    self.state = ChunkState::TrailerStart;
                } else {
                    if self.size > self.max_body_bytes - self.total_bytes {
                        return Err(HttpError::BodyTooLarge {
                            limit_bytes: self.max_body_bytes,
                        });
                    }
                    self.total_bytes += self.size;
                    self.state = ChunkState::Data {
                        remaining: self.size,
                    };
                    self.size = 0;
                }
            }
            ChunkState::DataCr => {
                if b != b'\r' {
                    return malformed("chunk data does not end in CRLF");
                }
                self.state = ChunkState::DataLf;
            }
            ChunkState::DataLf => {
                if b != b'\n' {
                    return malformed("chunk data does not end in CRLF");
                }
                self.state = ChunkState::Size { digits: 0 };
            }
            ChunkState::TrailerStart | ChunkState::Trailer => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return malformed("trailer section too large");
                }
                self.state = match (self.state, b) {
                    (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                    (_, b'\r') => ChunkState::TrailerLf,
                    (_, b'\n') => return malformed("trailer line does not end in CRLF"),
                    _ => ChunkState::Trailer,
                };
            }
            ChunkState::TrailerLf => {
                if b != b'\n' {
                    return malformed("trailer line does not end in CRLF");
                }
                self.state = ChunkState::TrailerStart;
            }
            ChunkState::EndLf => {
                if b != b'\n' {
                    return malformed("chunked body does not end in CRLF");
                }
                self.state = ChunkState::Done;
            }
            ChunkState::Data { .. } | ChunkState::Done => {}
        }
        Ok(())
    }

    /// One byte after the size digits: extension text, or the CR that ends the line.
    fn after_size(&mut self, b: u8) -> Result<(), HttpError> {
        self.line_bytes += 1;
        if self.line_bytes > MAX_CHUNK_LINE_BYTES {
            return Err(HttpError::MalformedChunk {
                what: "chunk size line too long",
            });
        }
        match b {
            b'\r' => self.state = ChunkState::SizeLf,
            b'\n' | 0 => {
                return Err(HttpError::MalformedChunk {
                    what: "chunk size line does not end in CRLF",
                });
            }
            b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
            _ if self.state == ChunkState::Extension => {}
            _ => {
                return Err(HttpError::MalformedChunk {
                    what: "chunk size is not hex",
                });
            }
        }
        Ok(())
    }
}
