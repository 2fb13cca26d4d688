//! The `wa` profile's binary encoding of a [`Stanza`]: WhatsApp's node format, dictionary
//! version 3 (docs/protocol-wa.md, "Node encoding"). A sans-I/O core: no I/O, no clock, no
//! randomness. The token tables are not typed here: they come from `wacore-binary`, whose
//! copy matches Baileys' `WABinary/constants` entry for entry (a test of ours checks the
//! decoding side against pyaileys, which carries Baileys' table).
//!
//! A frame's payload is one flags byte and one node. Flag bit `0x02` means the node is
//! zlib-compressed; it is inflated to at most [`MAX_INFLATED_NODE_BYTES`]. Other bits are
//! ignored, as whatsmeow and Baileys ignore them. We never compress.
//!
//! A node is a list: its length counts the tag, two items per attribute and one for the
//! content if there is any. Strings are written, in this order of preference, as a token of
//! the single-byte dictionary, a token of one of the four double-byte dictionaries, packed
//! nibbles (`0-9 - .`, at most 127 characters), packed upper-case hex, a JID, or raw UTF-8.
//! Our stanza model holds attribute values as text, so a value is written as a JID exactly
//! when its text has a JID form that reads back to the same text ([`jid_form`]):
//! - `{integrator}-{user}:{device}@interop` with a non-zero 16-bit integrator: `INTEROP_JID`.
//!   A client writes user, device and integrator; a server writes the server after them. WA
//!   Web and the whatsapp-rust project write it that way, and whatsmeow reads it that way,
//!   so [`parse_binary`] and [`Stanza::to_binary`] are told who wrote the node ([`Writer`]);
//! - `{user}:{device}@{s.whatsapp.net|lid|hosted|hosted.lid}`, device 1..=255: `AD_JID`;
//! - `{user}:{device}@msgr`: `FB_JID`;
//! - any other `{user}@{server}` with a non-empty server: `JID_PAIR`.
//!
//! Content is child nodes or bytes. A node whose content is a string (a token or packed
//! text) reads as those bytes, and an empty list or empty byte string reads as
//! [`Content::Empty`], the model's one form of nothing. After decoding, the stanza must pass
//! [`Stanza::validate`], so both encodings accept the same set of stanzas with the same
//! bounds: depth, attributes and children per element, name and value lengths.

use std::fmt;

use wacore_binary::token;

use super::{Content, MAX_ATTRS_PER_ELEMENT, MAX_CHILDREN_PER_ELEMENT, MAX_DEPTH};
use super::{Stanza, StanzaError};

/// Most bytes a compressed node may inflate to. The same as the largest frame we accept, so a
/// compressed frame can carry nothing an uncompressed one could not.
pub const MAX_INFLATED_NODE_BYTES: usize = crate::frame::MAX_FRAME_BYTES;

/// Flag bit of a frame's first byte: the node after it is zlib-compressed.
const FLAG_COMPRESSED: u8 = 0x02;

/// Who wrote a binary node. Only the interop JID is written differently by the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A client (the daemon, or the independent peer in tests).
    Client,
    /// The gatekeeper's server (the hub).
    Server,
}

/// Why a binary frame is not a stanza. Every variant but [`BinaryError::Stanza`] is the
/// peer's fault and ends the connection with [`reason`](BinaryError::reason); offsets are
/// bytes from the start of the node (after the flags byte, and after inflating).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BinaryError {
    /// Peer sent an empty frame: not even the flags byte. Close with `empty_frame`.
    EmptyFrame,
    /// Peer's compressed node does not inflate, or inflates past
    /// [`MAX_INFLATED_NODE_BYTES`]. Close with `bad_compression`.
    BadCompression,
    /// Peer's node ends in the middle of a value. Close with `truncated_node`.
    Truncated {
        /// Where the missing bytes should have started.
        offset: usize,
    },
    /// Peer used a tag byte that cannot start the value expected there (a list where a
    /// string must be, an unassigned tag). Close with `unexpected_tag`.
    UnexpectedTag {
        /// Where the tag byte is.
        offset: usize,
        /// The tag byte.
        tag: u8,
    },
    /// Peer named a double-byte token that dictionary version 3 does not have. Close with
    /// `unknown_token`.
    UnknownToken {
        /// Where the token's index byte is.
        offset: usize,
    },
    /// Peer sent a node list of length 0, or a node whose tag is empty. Close with
    /// `bad_node`.
    BadNode {
        /// Where the node starts.
        offset: usize,
    },
    /// Peer sent a string that is not UTF-8, or packed text with a byte outside its
    /// alphabet. Close with `bad_string`.
    BadString {
        /// Where the string starts.
        offset: usize,
    },
    /// Peer sent a JID with an unknown domain type, an empty server, a server that is not
    /// `interop` in an interop JID, or a JID nested in a JID. Close with `bad_jid`.
    BadJid {
        /// Where the JID starts.
        offset: usize,
    },
    /// Peer sent bytes after the root node. Close with `trailing_bytes`.
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
    },
    /// The node decoded but breaks a rule of the stanza model (a bound, a name, a repeated
    /// attribute): the peer's fault when parsing, our caller's when encoding.
    Stanza(StanzaError),
}

impl BinaryError {
    /// A short `snake_case` code for the closing `<stream:error>` or a log line.
    pub fn reason(&self) -> &'static str {
        match self {
            BinaryError::EmptyFrame => "empty_frame",
            BinaryError::BadCompression => "bad_compression",
            BinaryError::Truncated { .. } => "truncated_node",
            BinaryError::UnexpectedTag { .. } => "unexpected_tag",
            BinaryError::UnknownToken { .. } => "unknown_token",
            BinaryError::BadNode { .. } => "bad_node",
            BinaryError::BadString { .. } => "bad_string",
            BinaryError::BadJid { .. } => "bad_jid",
            BinaryError::TrailingBytes { .. } => "trailing_bytes",
            BinaryError::Stanza(e) => e.reason(),
        }
    }
}

impl fmt::Display for BinaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BinaryError::EmptyFrame | BinaryError::BadCompression => f.write_str(self.reason()),
            BinaryError::UnexpectedTag { offset, tag } => {
                write!(f, "unexpected tag {tag} at byte {offset}")
            }
            BinaryError::Truncated { offset }
            | BinaryError::UnknownToken { offset }
            | BinaryError::BadNode { offset }
            | BinaryError::BadString { offset }
            | BinaryError::BadJid { offset }
            | BinaryError::TrailingBytes { offset } => {
                write!(f, "{} at byte {offset}", self.reason())
            }
            BinaryError::Stanza(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BinaryError {}

impl From<StanzaError> for BinaryError {
    fn from(e: StanzaError) -> Self {
        BinaryError::Stanza(e)
    }
}

/// Decodes one frame's payload (flags byte and node) written by `writer`.
///
/// The result passes [`Stanza::validate`]; `Stanza::to_binary(writer)` of it reads back equal.
pub fn parse_binary(payload: &[u8], writer: Writer) -> Result<Stanza, BinaryError> {
    let Some((&flags, node)) = payload.split_first() else {
        return Err(BinaryError::EmptyFrame);
    };
    let inflated;
    let node = if flags & FLAG_COMPRESSED != 0 {
        inflated =
            wacore_binary::zlib_pool::decompress_zlib_pooled(node, MAX_INFLATED_NODE_BYTES as u64)
                .map_err(|_| BinaryError::BadCompression)?;
        &inflated[..]
    } else {
        node
    };
    let mut reader = Reader {
        buf: node,
        pos: 0,
        writer,
    };
    let stanza = reader.node(1)?;
    if reader.pos != node.len() {
        return Err(BinaryError::TrailingBytes { offset: reader.pos });
    }
    stanza.validate()?;
    Ok(stanza)
}

impl Stanza {
    /// Encodes this stanza as one frame's payload (flags byte 0, uncompressed), as `writer`
    /// writes it. Fails only for a stanza that does not pass [`Stanza::validate`].
    pub fn to_binary(&self, writer: Writer) -> Result<Vec<u8>, BinaryError> {
        self.validate()?;
        let mut out = vec![0u8];
        write_node(self, writer, &mut out);
        Ok(out)
    }
}

/// A cursor over one node's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    writer: Writer,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, BinaryError> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or(BinaryError::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(byte)
    }

    /// `n` bytes as a big-endian unsigned integer (n <= 4).
    fn uint(&mut self, n: usize) -> Result<u32, BinaryError> {
        let bytes = self.take(n)?;
        Ok(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BinaryError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(BinaryError::Truncated { offset: self.pos })?;
        // INVARIANT: `pos <= end <= buf.len()`, checked just above.
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The length of a list whose tag byte was just read at `at`.
    fn list_len(&mut self, tag: u8, at: usize) -> Result<usize, BinaryError> {
        match tag {
            token::LIST_EMPTY => Ok(0),
            token::LIST_8 => Ok(usize::from(self.u8()?)),
            token::LIST_16 => Ok(self.uint(2)? as usize),
            _ => Err(BinaryError::UnexpectedTag { offset: at, tag }),
        }
    }

    /// The byte length of a binary value whose tag was just read, if `tag` is one.
    fn binary_len(&mut self, tag: u8) -> Result<Option<usize>, BinaryError> {
        Ok(match tag {
            token::BINARY_8 => Some(usize::from(self.u8()?)),
            token::BINARY_20 => Some((self.uint(3)? & 0x0f_ffff) as usize),
            token::BINARY_32 => Some(self.uint(4)? as usize),
            _ => None,
        })
    }

    fn node(&mut self, depth: usize) -> Result<Stanza, BinaryError> {
        let start = self.pos;
        if depth > MAX_DEPTH {
            return Err(StanzaError::TooDeep {
                offset: Some(start),
            }
            .into());
        }
        let tag = self.u8()?;
        let len = self.list_len(tag, start)?;
        if len == 0 {
            return Err(BinaryError::BadNode { offset: start });
        }
        let attr_count = (len - 1) / 2;
        if attr_count > MAX_ATTRS_PER_ELEMENT {
            return Err(StanzaError::TooManyAttributes {
                offset: Some(start),
            }
            .into());
        }
        let name = self.string(Jids::Refused)?;
        if name.is_empty() {
            return Err(BinaryError::BadNode { offset: start });
        }
        let mut stanza = Stanza::new(name);
        for _ in 0..attr_count {
            let key = self.string(Jids::Refused)?;
            let value = self.string(Jids::Allowed)?;
            if stanza.attrs.iter().any(|(k, _)| *k == key) {
                return Err(StanzaError::DuplicateAttribute {
                    offset: Some(start),
                }
                .into());
            }
            stanza.attrs.push((key, value));
        }
        if len % 2 == 0 {
            stanza.content = self.content(depth)?;
        }
        Ok(stanza)
    }

    fn content(&mut self, depth: usize) -> Result<Content, BinaryError> {
        let at = self.pos;
        let tag = self.u8()?;
        if matches!(tag, token::LIST_EMPTY | token::LIST_8 | token::LIST_16) {
            let count = self.list_len(tag, at)?;
            if count > MAX_CHILDREN_PER_ELEMENT {
                return Err(StanzaError::TooManyChildren { offset: Some(at) }.into());
            }
            let mut children = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                children.push(self.node(depth + 1)?);
            }
            return Ok(if children.is_empty() {
                Content::Empty
            } else {
                Content::Children(children)
            });
        }
        let bytes = match self.binary_len(tag)? {
            Some(n) => self.take(n)?.to_vec(),
            None => self.string_after_tag(tag, at, Jids::Allowed)?.into_bytes(),
        };
        Ok(if bytes.is_empty() {
            Content::Empty
        } else {
            Content::Bytes(bytes)
        })
    }

    fn string(&mut self, jids: Jids) -> Result<String, BinaryError> {
        let at = self.pos;
        let tag = self.u8()?;
        self.string_after_tag(tag, at, jids)
    }

    fn string_after_tag(&mut self, tag: u8, at: usize, jids: Jids) -> Result<String, BinaryError> {
        if let Some(n) = self.binary_len(tag)? {
            let bytes = self.take(n)?;
            return String::from_utf8(bytes.to_vec())
                .map_err(|_| BinaryError::BadString { offset: at });
        }
        match tag {
            token::LIST_EMPTY => Ok(String::new()),
            token::DICTIONARY_0..=token::DICTIONARY_3 => {
                let index_at = self.pos;
                let index = self.u8()?;
                token::get_double_token(tag - token::DICTIONARY_0, index)
                    .map(str::to_owned)
                    .ok_or(BinaryError::UnknownToken { offset: index_at })
            }
            token::NIBBLE_8 | token::HEX_8 => self.packed(tag, at),
            token::JID_PAIR | token::AD_JID | token::FB_JID | token::INTEROP_JID => {
                if jids == Jids::Refused {
                    return Err(BinaryError::BadJid { offset: at });
                }
                self.jid(tag, at)
            }
            _ => token::get_single_token(tag)
                .map(str::to_owned)
                .ok_or(BinaryError::UnexpectedTag { offset: at, tag }),
        }
    }

    fn packed(&mut self, tag: u8, at: usize) -> Result<String, BinaryError> {
        let start = self.u8()?;
        let odd = start & 0x80 != 0;
        let bytes = self.take(usize::from(start & 0x7f))?;
        let mut text = String::with_capacity(bytes.len() * 2);
        for (i, &byte) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            for (j, nibble) in [byte >> 4, byte & 0x0f].into_iter().enumerate() {
                if odd && last && j == 1 {
                    // The pad of an odd length; Baileys and whatsmeow write 0x0f there.
                    continue;
                }
                let c = match (tag, nibble) {
                    (token::NIBBLE_8, 0..=9) => char::from(b'0' + nibble),
                    (token::NIBBLE_8, 10) => '-',
                    (token::NIBBLE_8, 11) => '.',
                    (token::HEX_8, 0..=9) => char::from(b'0' + nibble),
                    (token::HEX_8, 10..=15) => char::from(b'A' + nibble - 10),
                    _ => return Err(BinaryError::BadString { offset: at }),
                };
                text.push(c);
            }
        }
        Ok(text)
    }

    fn jid(&mut self, tag: u8, at: usize) -> Result<String, BinaryError> {
        let bad = BinaryError::BadJid { offset: at };
        match tag {
            token::JID_PAIR => {
                let user = self.string(Jids::Refused)?;
                let server = self.string(Jids::Refused)?;
                if server.is_empty() {
                    return Err(bad);
                }
                Ok(format!("{user}@{server}"))
            }
            token::AD_JID => {
                let domain = self.u8()?;
                let device = self.u8()?;
                let user = self.string(Jids::Refused)?;
                let server = AD_DOMAINS
                    .iter()
                    .find(|(d, _)| *d == domain)
                    .map(|(_, s)| *s)
                    .ok_or(bad)?;
                Ok(if device == 0 {
                    format!("{user}@{server}")
                } else {
                    format!("{user}:{device}@{server}")
                })
            }
            token::FB_JID => {
                let user = self.string(Jids::Refused)?;
                let device = self.uint(2)?;
                let server = self.string(Jids::Refused)?;
                if server.is_empty() {
                    return Err(bad);
                }
                Ok(format!("{user}:{device}@{server}"))
            }
            _ => {
                let user = self.string(Jids::Refused)?;
                let device = self.uint(2)?;
                let integrator = self.uint(2)?;
                if self.writer == Writer::Server && self.string(Jids::Refused)? != INTEROP {
                    return Err(bad);
                }
                if user.is_empty() || integrator == 0 {
                    return Err(bad);
                }
                Ok(format!("{integrator}-{user}:{device}@{INTEROP}"))
            }
        }
    }
}

/// Whether a string being read may be a JID. The parts of a JID may not be JIDs themselves:
/// nothing writes that, and refusing it keeps a JID's meaning one level deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jids {
    Allowed,
    Refused,
}

/// The server of interop JIDs. Dictionary version 3 has no token for it, so it is written
/// as raw text where a server writes it.
const INTEROP: &str = "interop";

/// `AD_JID` domain types and the servers they stand for (whatsmeow `types/jid.go`, Baileys
/// `WABinary/jid-utils`).
const AD_DOMAINS: [(u8, &str); 4] = [
    (0, "s.whatsapp.net"),
    (1, "lid"),
    (128, "hosted"),
    (129, "hosted.lid"),
];

/// The wire form of a JID-shaped text.
#[derive(Debug, PartialEq, Eq)]
enum JidForm<'a> {
    Interop {
        user: &'a str,
        device: u16,
        integrator: u16,
    },
    Ad {
        domain: u8,
        device: u8,
        user: &'a str,
    },
    Fb {
        user: &'a str,
        device: u16,
        server: &'a str,
    },
    Pair {
        user: &'a str,
        server: &'a str,
    },
}

/// A decimal number without sign or leading zeros (so it reads back as the same text).
fn canonical_decimal(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// `{user}:{device}` split at the last colon, with a canonical device number.
fn user_device(part: &str) -> Option<(&str, u32)> {
    let (user, device) = part.rsplit_once(':')?;
    (!user.is_empty()).then_some(())?;
    Some((user, canonical_decimal(device)?))
}

/// The JID form of `text`, if it has one that reads back as exactly `text`.
fn jid_form(text: &str) -> Option<JidForm<'_>> {
    let (user_part, server) = text.split_once('@')?;
    if server.is_empty() {
        return None;
    }
    if server == INTEROP
        && let Some((head, rest)) = user_part.split_once('-')
        && let Some(integrator) = canonical_decimal(head).and_then(|n| u16::try_from(n).ok())
        && integrator != 0
        && let Some((user, device)) = user_device(rest)
        && let Ok(device) = u16::try_from(device)
    {
        return Some(JidForm::Interop {
            user,
            device,
            integrator,
        });
    }
    if let Some(&(domain, _)) = AD_DOMAINS.iter().find(|(_, s)| *s == server)
        && let Some((user, device)) = user_device(user_part)
        && let Ok(device) = u8::try_from(device)
        && device != 0
    {
        return Some(JidForm::Ad {
            domain,
            device,
            user,
        });
    }
    if server == "msgr"
        && let Some((user, device)) = user_device(user_part)
        && let Ok(device) = u16::try_from(device)
    {
        return Some(JidForm::Fb {
            user,
            device,
            server,
        });
    }
    Some(JidForm::Pair {
        user: user_part,
        server,
    })
}

fn write_node(stanza: &Stanza, writer: Writer, out: &mut Vec<u8>) {
    let has_content = stanza.content != Content::Empty;
    write_list_len(1 + 2 * stanza.attrs.len() + usize::from(has_content), out);
    write_string(&stanza.tag, Jids::Refused, writer, out);
    for (key, value) in &stanza.attrs {
        write_string(key, Jids::Refused, writer, out);
        write_string(value, Jids::Allowed, writer, out);
    }
    match &stanza.content {
        Content::Empty => {}
        Content::Bytes(bytes) => write_bytes(bytes, out),
        Content::Children(children) => {
            write_list_len(children.len(), out);
            for child in children {
                write_node(child, writer, out);
            }
        }
    }
}

/// INVARIANT: `len` fits LIST_16; the stanza passed `validate`, which bounds attributes and
/// children far below 65,535.
fn write_list_len(len: usize, out: &mut Vec<u8>) {
    match len {
        0 => out.push(token::LIST_EMPTY),
        1..=255 => out.extend([token::LIST_8, len as u8]),
        _ => {
            out.push(token::LIST_16);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
}

/// INVARIANT: `bytes` is shorter than 2^32; it came from a frame or a stanza of at most a
/// frame's size.
fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let len = bytes.len();
    if len < 256 {
        out.extend([token::BINARY_8, len as u8]);
    } else if len < 1 << 20 {
        out.push(token::BINARY_20);
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    } else {
        out.push(token::BINARY_32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

fn write_string(text: &str, jids: Jids, writer: Writer, out: &mut Vec<u8>) {
    if text.is_empty() {
        return write_bytes(&[], out);
    }
    match token::index_of_token(text) {
        Some(token::TokenKind::Single(index)) => return out.push(index),
        Some(token::TokenKind::Double(dict, index)) => {
            return out.extend([token::DICTIONARY_0 + dict, index]);
        }
        None => {}
    }
    if let Some(packed) = packed_tag(text) {
        return write_packed(text, packed, out);
    }
    if jids == Jids::Allowed
        && let Some(form) = jid_form(text)
    {
        return write_jid(&form, writer, out);
    }
    write_bytes(text.as_bytes(), out);
}

/// `NIBBLE_8` or `HEX_8` if `text` packs as one (nibbles first, as Baileys and whatsmeow).
fn packed_tag(text: &str) -> Option<u8> {
    if text.len() > usize::from(token::PACKED_MAX) {
        return None;
    }
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Some(token::NIBBLE_8)
    } else if text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        Some(token::HEX_8)
    } else {
        None
    }
}

fn write_packed(text: &str, tag: u8, out: &mut Vec<u8>) {
    let nibble = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'-' => 10,
        b'.' => 11,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 15,
    };
    let bytes = text.as_bytes();
    let pairs = bytes.len().div_ceil(2);
    // INVARIANT: packed_tag allowed at most PACKED_MAX (127) characters, so pairs <= 64.
    let odd_flag = if bytes.len() % 2 == 1 { 0x80 } else { 0 };
    out.extend([tag, pairs as u8 | odd_flag]);
    for pair in bytes.chunks(2) {
        // INVARIANT: `chunks(2)` never yields an empty chunk.
        let high = nibble(pair[0]);
        let low = pair.get(1).map_or(15, |&b| nibble(b));
        out.push(high << 4 | low);
    }
}

fn write_jid(form: &JidForm<'_>, writer: Writer, out: &mut Vec<u8>) {
    match *form {
        JidForm::Interop {
            user,
            device,
            integrator,
        } => {
            out.push(token::INTEROP_JID);
            write_string(user, Jids::Refused, writer, out);
            out.extend_from_slice(&device.to_be_bytes());
            out.extend_from_slice(&integrator.to_be_bytes());
            if writer == Writer::Server {
                write_string(INTEROP, Jids::Refused, writer, out);
            }
        }
        JidForm::Ad {
            domain,
            device,
            user,
        } => {
            out.extend([token::AD_JID, domain, device]);
            write_string(user, Jids::Refused, writer, out);
        }
        JidForm::Fb {
            user,
            device,
            server,
        } => {
            out.push(token::FB_JID);
            write_string(user, Jids::Refused, writer, out);
            out.extend_from_slice(&device.to_be_bytes());
            write_string(server, Jids::Refused, writer, out);
        }
        JidForm::Pair { user, server } => {
            out.push(token::JID_PAIR);
            if user.is_empty() {
                out.push(token::LIST_EMPTY);
            } else {
                write_string(user, Jids::Refused, writer, out);
            }
            write_string(server, Jids::Refused, writer, out);
        }
    }
}

#[cfg(test)]
#[path = "binary_tests.rs"]
mod tests;
