//! Message content: the plaintext that travels inside every `<enc>` element.
//!
//! This module owns three things:
//! - the protobuf `Message` subset, mirroring `proto/content.proto` field for field
//!   with WhatsApp's own field numbers (prost derive; no build script, no protoc);
//! - the padding around it: protobuf bytes, then N bytes of value N with N in
//!   `1..=`[`MAX_PADDING_BYTES`], checked on the way in;
//! - message ids, `3EB0` followed by 18 uppercase hex digits.
//!
//! It is a sans-I/O core: no I/O, no clock, no randomness of its own. The caller passes
//! the random source and the current time in. It knows nothing of Signal, stanzas or
//! the store; the engine wraps its output in `<enc>` and its ids in `<message id>`.
//!
//! Every input from outside is size-checked against [`MAX_CONTENT_BYTES`] before it is
//! parsed. Nesting (a reply quoting a reply quoting ...) is bounded by prost's decode
//! recursion limit of 100 nested messages.
//!
//! The derived `Debug` of [`Message`] prints message bodies; never log it.

use core::fmt;

mod actions;
mod emoji;

pub use actions::*;
pub use emoji::*;

use prost::Message as _;
use rand::RngExt as _;
use sha2::{Digest as _, Sha256};

/// Largest padded plaintext, in bytes, that we produce or accept.
///
/// Media travels by reference (url, keys, hashes), so real content is a few KiB at most.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// Largest padding, in bytes; the smallest is [`MIN_PADDING_BYTES`].
pub const MAX_PADDING_BYTES: u8 = 16;

/// Smallest padding, in bytes. Padding is never absent.
pub const MIN_PADDING_BYTES: u8 = 1;

/// Largest protobuf body, in bytes, that [`encode_padded`] accepts: it keeps room for the
/// largest padding so that the outcome never depends on the random draw.
pub const MAX_BODY_BYTES: usize = MAX_CONTENT_BYTES - MAX_PADDING_BYTES as usize;

/// Length of a message id, in characters (all ASCII).
pub const MESSAGE_ID_CHARS: usize = 22;

/// Fixed start of every message id.
pub const MESSAGE_ID_PREFIX: &str = "3EB0";

/// How many leading bytes of the SHA-256 digest a message id shows, as hex.
pub const MESSAGE_ID_DIGEST_BYTES: usize = 9;

/// Everything that can go wrong in this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentError {
    /// Content exceeds its size bound. Peer, when received: the shell acks the stanza and
    /// records the message as unreadable (no retry: it decrypted fine). Our API client,
    /// when sending: the shell refuses the request. `len` is the measured size in bytes
    /// and `max` the bound it broke: padded bytes against [`MAX_CONTENT_BYTES`] for
    /// received bytes and [`encode_with_padding`]; the protobuf body against
    /// [`MAX_BODY_BYTES`] for [`encode_padded`].
    TooLarge {
        /// Size measured, in bytes.
        len: usize,
        /// Bound that applies, in bytes.
        max: usize,
    },
    /// Peer sent plaintext whose padding is malformed. The shell acks the stanza and
    /// records the message as unreadable.
    BadPadding {
        /// What exactly is wrong.
        fault: PaddingFault,
    },
    /// Peer sent bytes that are not a valid protobuf `Message` (bad wire type, truncated
    /// field, string not UTF-8, nesting too deep). The shell acks and records the message
    /// as unreadable.
    Protobuf {
        /// The decoder's description. It names message types, fields and the fault,
        /// never payload bytes, so it is safe to log.
        detail: String,
    },
    /// Bug in our caller: asked for a padding length outside
    /// [`MIN_PADDING_BYTES`]`..=`[`MAX_PADDING_BYTES`].
    PaddingLengthOutOfRange {
        /// Length requested, in bytes.
        pad_len: u8,
    },
    /// Peer or API client supplied a message id that is not `3EB0` followed by 18
    /// uppercase hex digits. The shell rejects the stanza or request that carried it.
    BadMessageId {
        /// Length of the id received, in bytes (the id itself is not kept).
        len: usize,
    },
}

/// What is wrong with received padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingFault {
    /// The plaintext is empty, so there is no padding at all.
    EmptyInput,
    /// The last byte, the padding count, is outside `1..=16`.
    CountOutOfRange {
        /// The last byte.
        count: u8,
    },
    /// The padding count claims more bytes than the plaintext holds.
    CountExceedsInput {
        /// The last byte.
        count: u8,
        /// Length of the whole plaintext, in bytes.
        len: usize,
    },
    /// One of the last `count` bytes differs from `count`.
    MismatchedByte {
        /// The last byte.
        count: u8,
        /// The first differing byte found.
        found: u8,
    },
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "content is {len} bytes, more than the {max}-byte bound")
            }
            Self::BadPadding { fault } => write!(f, "bad content padding: {fault}"),
            Self::Protobuf { detail } => write!(f, "content is not a valid Message: {detail}"),
            Self::PaddingLengthOutOfRange { pad_len } => {
                write!(f, "padding length {pad_len} is outside 1..=16")
            }
            Self::BadMessageId { len } => {
                write!(
                    f,
                    "message id of {len} bytes is not 3EB0 plus 18 uppercase hex digits"
                )
            }
        }
    }
}

impl fmt::Display for PaddingFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyInput => f.write_str("plaintext is empty"),
            Self::CountOutOfRange { count } => write!(f, "count {count} is outside 1..=16"),
            Self::CountExceedsInput { count, len } => {
                write!(f, "count {count} exceeds the {len}-byte plaintext")
            }
            Self::MismatchedByte { count, found } => {
                write!(f, "padding byte {found} differs from count {count}")
            }
        }
    }
}

impl std::error::Error for ContentError {}

/// WhatsApp's `Message`, reduced to the kinds we send and show.
///
/// Normally exactly one field is set. Fields we do not model are skipped on decode.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// Plain text with no reply context.
    #[prost(string, optional, tag = "1")]
    pub conversation: Option<String>,
    /// A group's sender key, given over a pairwise session ([`SenderKeyDistribution`]).
    /// Travels alone in the pairwise `<enc>` of a group message; the content is in the skmsg.
    #[prost(message, optional, tag = "2")]
    pub sender_key_distribution_message: Option<SenderKeyDistribution>,
    #[prost(message, optional, tag = "3")]
    pub image_message: Option<ImageMessage>,
    /// A shared place (pin): coordinates, optional name and address.
    #[prost(message, optional, tag = "5")]
    pub location_message: Option<LocationMessage>,
    /// Text with context: a reply carries [`ContextInfo`].
    #[prost(message, optional, tag = "6")]
    pub extended_text_message: Option<ExtendedTextMessage>,
    #[prost(message, optional, tag = "7")]
    pub document_message: Option<DocumentMessage>,
    #[prost(message, optional, tag = "8")]
    pub audio_message: Option<AudioMessage>,
    #[prost(message, optional, tag = "9")]
    pub video_message: Option<VideoMessage>,
    /// An edit or a delete for everyone of an earlier message ([`ProtocolMessage`]).
    #[prost(message, optional, boxed, tag = "12")]
    pub protocol_message: Option<Box<ProtocolMessage>>,
    #[prost(message, optional, tag = "46")]
    pub reaction_message: Option<ReactionMessage>,
    /// The wrapper some clients put around an edit's `protocolMessage`; read, never sent.
    #[prost(message, optional, boxed, tag = "58")]
    pub edited_message: Option<Box<FutureProofMessage>>,
}

/// A sender key for group `group_id` (the id, without `@g.us`): the serialized Signal
/// SenderKeyDistributionMessage (version byte 0x33, then its protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderKeyDistribution {
    #[prost(string, optional, tag = "1")]
    pub group_id: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub axolotl_sender_key_distribution_message: Option<Vec<u8>>,
}

impl Message {
    /// A message that only hands over the sender key `skdm` of group `group_id`.
    pub fn sender_key_distribution(group_id: impl Into<String>, skdm: Vec<u8>) -> Self {
        Self {
            sender_key_distribution_message: Some(SenderKeyDistribution {
                group_id: Some(group_id.into()),
                axolotl_sender_key_distribution_message: Some(skdm),
            }),
            ..Self::default()
        }
    }
}

/// Text, optionally with reply context.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendedTextMessage {
    #[prost(string, optional, tag = "1")]
    pub text: Option<String>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<ContextInfo>,
}

/// Reply context: the message answered and a copy of it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContextInfo {
    /// Id of the message answered.
    #[prost(string, optional, tag = "1")]
    pub stanza_id: Option<String>,
    /// Author of the message answered (a user address).
    #[prost(string, optional, tag = "2")]
    pub participant: Option<String>,
    /// Copy of the message answered, shown above the reply.
    #[prost(message, optional, boxed, tag = "3")]
    pub quoted_message: Option<Box<Message>>,
}

/// A picture, by reference: the blob is fetched from `url`/`direct_path`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub caption: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "5")]
    pub file_length: Option<u64>,
    #[prost(uint32, optional, tag = "6")]
    pub height: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub width: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub media_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "11")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "12")]
    pub media_key_timestamp: Option<i64>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<ContextInfo>,
}

/// Sound, by reference. `ptt == Some(true)` marks a voice note.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AudioMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    pub file_length: Option<u64>,
    #[prost(uint32, optional, tag = "5")]
    pub seconds: Option<u32>,
    #[prost(bool, optional, tag = "6")]
    pub ptt: Option<bool>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub media_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "10")]
    pub media_key_timestamp: Option<i64>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<ContextInfo>,
}

/// A video, by reference.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VideoMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    pub file_length: Option<u64>,
    #[prost(uint32, optional, tag = "5")]
    pub seconds: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub media_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "7")]
    pub caption: Option<String>,
    #[prost(uint32, optional, tag = "9")]
    pub height: Option<u32>,
    #[prost(uint32, optional, tag = "10")]
    pub width: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "11")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "13")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "14")]
    pub media_key_timestamp: Option<i64>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<ContextInfo>,
}

/// Any other file, by reference.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub title: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "5")]
    pub file_length: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub media_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "8")]
    pub file_name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "10")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "11")]
    pub media_key_timestamp: Option<i64>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<ContextInfo>,
    #[prost(string, optional, tag = "20")]
    pub caption: Option<String>,
}

/// A reaction to the message named by `key`. `text` is one emoji; `""` removes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReactionMessage {
    #[prost(message, optional, tag = "1")]
    pub key: Option<MessageKey>,
    #[prost(string, optional, tag = "2")]
    pub text: Option<String>,
    #[prost(int64, optional, tag = "4")]
    pub sender_timestamp_ms: Option<i64>,
}

/// Names one message in one chat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageKey {
    /// The chat: the other party's address.
    #[prost(string, optional, tag = "1")]
    pub remote_jid: Option<String>,
    /// Whether the message named was sent by the reacting side.
    #[prost(bool, optional, tag = "2")]
    pub from_me: Option<bool>,
    /// Id of the message named.
    #[prost(string, optional, tag = "3")]
    pub id: Option<String>,
    /// Author of the message named, in group chats.
    #[prost(string, optional, tag = "4")]
    pub participant: Option<String>,
}

/// What a [`Message`] is, for routing and for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentKind {
    Text,
    Image,
    Audio,
    /// Audio with `ptt` set: a voice note.
    Voice,
    Video,
    Document,
    Reaction,
    /// A `protocolMessage` of type `MESSAGE_EDIT`: new text for an earlier message.
    Edit,
    /// A `protocolMessage` of type `REVOKE`: an earlier message deleted for everyone.
    Revoke,
    Location,
    /// None of the fields we model is set (a kind WhatsApp has and we do not).
    Unknown,
}

impl ContentKind {
    /// Lowercase name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Audio => "audio",
            Self::Voice => "voice",
            Self::Video => "video",
            Self::Document => "file",
            Self::Reaction => "reaction",
            Self::Edit => "edit",
            Self::Revoke => "revoke",
            Self::Location => "location",
            Self::Unknown => "unknown",
        }
    }

    /// The byte stored for this kind in an outbox row (`store::OutboxRow::kind`; docs/store.md).
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Text => 1,
            Self::Image => 2,
            Self::Audio => 3,
            Self::Voice => 4,
            Self::Video => 5,
            Self::Document => 6,
            Self::Reaction => 7,
            Self::Edit => 8,
            Self::Revoke => 9,
            Self::Location => 10,
        }
    }

    /// The kind for a stored byte; bytes no version wrote read as `Unknown`.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Text,
            2 => Self::Image,
            3 => Self::Audio,
            4 => Self::Voice,
            5 => Self::Video,
            6 => Self::Document,
            7 => Self::Reaction,
            8 => Self::Edit,
            9 => Self::Revoke,
            10 => Self::Location,
            _ => Self::Unknown,
        }
    }

    /// Whether the content refers to a media blob.
    pub fn is_media(self) -> bool {
        matches!(
            self,
            Self::Image | Self::Audio | Self::Voice | Self::Video | Self::Document
        )
    }
}

impl fmt::Display for ContentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Message {
    /// Plain text (`conversation`).
    pub fn text(body: impl Into<String>) -> Self {
        Self {
            conversation: Some(body.into()),
            ..Self::default()
        }
    }

    /// Text replying to message `stanza_id` by `participant`, quoting `quoted`.
    pub fn reply(
        body: impl Into<String>,
        stanza_id: impl Into<String>,
        participant: impl Into<String>,
        quoted: Option<Message>,
    ) -> Self {
        Self {
            extended_text_message: Some(ExtendedTextMessage {
                text: Some(body.into()),
                context_info: Some(ContextInfo {
                    stanza_id: Some(stanza_id.into()),
                    participant: Some(participant.into()),
                    quoted_message: quoted.map(Box::new),
                }),
            }),
            ..Self::default()
        }
    }

    /// Reaction `emoji` to the message named by `key`; `""` removes a reaction.
    pub fn reaction(key: MessageKey, emoji: impl Into<String>, sender_timestamp_ms: i64) -> Self {
        Self {
            reaction_message: Some(ReactionMessage {
                key: Some(key),
                text: Some(emoji.into()),
                sender_timestamp_ms: Some(sender_timestamp_ms),
            }),
            ..Self::default()
        }
    }

    /// What this message is. If several fields are set (peers do not do that), the first
    /// in this order wins: text, extended text, image, video, audio, document, reaction,
    /// location, then an edit or revoke (a `protocolMessage`, bare or in `editedMessage`).
    pub fn kind(&self) -> ContentKind {
        if self.conversation.is_some() || self.extended_text_message.is_some() {
            ContentKind::Text
        } else if self.image_message.is_some() {
            ContentKind::Image
        } else if self.video_message.is_some() {
            ContentKind::Video
        } else if let Some(audio) = &self.audio_message {
            if audio.ptt == Some(true) {
                ContentKind::Voice
            } else {
                ContentKind::Audio
            }
        } else if self.document_message.is_some() {
            ContentKind::Document
        } else if self.reaction_message.is_some() {
            ContentKind::Reaction
        } else if self.location_message.is_some() {
            ContentKind::Location
        } else {
            self.protocol()
                .map_or(ContentKind::Unknown, ProtocolMessage::kind)
        }
    }

    /// The text of a text message: `conversation`, else `extendedTextMessage.text`. An edit's
    /// new text is [`Message::edit_of`]'s.
    pub fn text_body(&self) -> Option<&str> {
        self.conversation.as_deref().or_else(|| {
            self.extended_text_message
                .as_ref()
                .and_then(|ext| ext.text.as_deref())
        })
    }

    /// Reply context, from whichever of the text or media fields carries one.
    pub fn context_info(&self) -> Option<&ContextInfo> {
        let ext = self.extended_text_message.as_ref();
        ext.and_then(|m| m.context_info.as_ref())
            .or_else(|| self.image_message.as_ref()?.context_info.as_ref())
            .or_else(|| self.video_message.as_ref()?.context_info.as_ref())
            .or_else(|| self.audio_message.as_ref()?.context_info.as_ref())
            .or_else(|| self.document_message.as_ref()?.context_info.as_ref())
            .or_else(|| self.location_message.as_ref()?.context_info.as_ref())
    }

    /// Id of the message this one replies to (`contextInfo.stanzaId`).
    pub fn reply_to(&self) -> Option<&str> {
        self.context_info()?.stanza_id.as_deref()
    }
}

/// Encodes `msg` and appends `pad_len` bytes of value `pad_len`.
///
/// Deterministic; [`encode_padded`] draws `pad_len` and calls this.
pub fn encode_with_padding(msg: &Message, pad_len: u8) -> Result<Vec<u8>, ContentError> {
    if !(MIN_PADDING_BYTES..=MAX_PADDING_BYTES).contains(&pad_len) {
        return Err(ContentError::PaddingLengthOutOfRange { pad_len });
    }
    let body_len = msg.encoded_len();
    let len = body_len.saturating_add(usize::from(pad_len));
    if len > MAX_CONTENT_BYTES {
        return Err(ContentError::TooLarge {
            len,
            max: MAX_CONTENT_BYTES,
        });
    }
    let mut out = msg.encode_to_vec();
    out.resize(len, pad_len);
    Ok(out)
}

/// Encodes `msg` with padding of a length drawn uniformly from `1..=16`.
///
/// Refuses a body longer than [`MAX_BODY_BYTES`], whatever the draw would have been.
pub fn encode_padded<R: rand::Rng + ?Sized>(
    msg: &Message,
    rng: &mut R,
) -> Result<Vec<u8>, ContentError> {
    let body_len = msg.encoded_len();
    if body_len > MAX_BODY_BYTES {
        return Err(ContentError::TooLarge {
            len: body_len,
            max: MAX_BODY_BYTES,
        });
    }
    let pad_len = rng.random_range(MIN_PADDING_BYTES..=MAX_PADDING_BYTES);
    encode_with_padding(msg, pad_len)
}

/// Checks the size bound, then the padding, then decodes the protobuf body.
pub fn decode_padded(bytes: &[u8]) -> Result<Message, ContentError> {
    if bytes.len() > MAX_CONTENT_BYTES {
        return Err(ContentError::TooLarge {
            len: bytes.len(),
            max: MAX_CONTENT_BYTES,
        });
    }
    let body = strip_padding(bytes).map_err(|fault| ContentError::BadPadding { fault })?;
    let msg = Message::decode(body).map_err(|err| ContentError::Protobuf {
        detail: err.to_string(),
    })?;
    if !msg.locations_are_finite() {
        return Err(ContentError::Protobuf {
            detail: "location coordinates are not finite numbers".to_owned(),
        });
    }
    Ok(msg)
}

/// Returns the bytes before a well-formed padding.
fn strip_padding(bytes: &[u8]) -> Result<&[u8], PaddingFault> {
    let Some(&count) = bytes.last() else {
        return Err(PaddingFault::EmptyInput);
    };
    if !(MIN_PADDING_BYTES..=MAX_PADDING_BYTES).contains(&count) {
        return Err(PaddingFault::CountOutOfRange { count });
    }
    let Some(body_len) = bytes.len().checked_sub(usize::from(count)) else {
        return Err(PaddingFault::CountExceedsInput {
            count,
            len: bytes.len(),
        });
    };
    let (body, padding) = bytes.split_at(body_len);
    match padding.iter().find(|&&b| b != count) {
        Some(&found) => Err(PaddingFault::MismatchedByte { count, found }),
        None => Ok(body),
    }
}

/// A message id: `3EB0` followed by 18 uppercase hex digits, 22 ASCII bytes in all.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; MESSAGE_ID_CHARS]);

impl MessageId {
    /// Accepts exactly `3EB0` followed by 18 uppercase hex digits, nothing else.
    pub fn parse(text: &str) -> Result<Self, ContentError> {
        let bad = ContentError::BadMessageId { len: text.len() };
        let bytes: [u8; MESSAGE_ID_CHARS] = text.as_bytes().try_into().map_err(|_| bad.clone())?;
        let (prefix, digits) = bytes.split_at(MESSAGE_ID_PREFIX.len());
        let digits_ok = digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
        if prefix != MESSAGE_ID_PREFIX.as_bytes() || !digits_ok {
            return Err(bad);
        }
        Ok(Self(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // INVARIANT: both constructors admit only ASCII ("3EB0" and hex digits), and
        // every ASCII byte sequence is valid UTF-8.
        core::str::from_utf8(&self.0).expect("message id bytes are ASCII")
    }

    /// The id as its 22 ASCII bytes, for use as a fixed-width key.
    pub fn as_bytes(&self) -> &[u8; MESSAGE_ID_CHARS] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

impl core::str::FromStr for MessageId {
    type Err = ContentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Makes a fresh message id: `3EB0` followed by the first 9 bytes, as uppercase hex, of
/// SHA-256(`unix_secs` as 8 bytes big-endian ‖ `own_user` as UTF-8 ‖ `random`).
///
/// The caller supplies the time and 16 freshly drawn random bytes.
pub fn message_id(unix_secs: u64, own_user: &str, random: &[u8; 16]) -> MessageId {
    const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut hasher = Sha256::new();
    hasher.update(unix_secs.to_be_bytes());
    hasher.update(own_user.as_bytes());
    hasher.update(random);
    let digest = hasher.finalize();
    let mut id = [0u8; MESSAGE_ID_CHARS];
    let (prefix, digits) = id.split_at_mut(MESSAGE_ID_PREFIX.len());
    prefix.copy_from_slice(MESSAGE_ID_PREFIX.as_bytes());
    for (pair, byte) in digits
        .chunks_exact_mut(2)
        .zip(digest.iter().take(MESSAGE_ID_DIGEST_BYTES))
    {
        for (slot, nibble) in pair.iter_mut().zip([byte >> 4, byte & 0x0f]) {
            // INVARIANT: a nibble is at most 15, inside the 16-entry table.
            *slot = HEX_UPPER[usize::from(nibble)];
        }
    }
    MessageId(id)
}

/// The `<message type>` for a content kind. A location is `media` (with `mediatype`
/// `location`), as WhatsApp's clients send it; an edit and a revoke are `text`.
pub fn stanza_type(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Reaction => "reaction",
        ContentKind::Location => "media",
        k if k.is_media() => "media",
        _ => "text",
    }
}

/// The `<message edit>` attribute for a content kind: `1` for an edit, `7` for a delete
/// for everyone by its sender; none for everything else.
pub fn stanza_edit(kind: ContentKind) -> Option<&'static str> {
    match kind {
        ContentKind::Edit => Some(EDIT_ATTR_MESSAGE_EDIT),
        ContentKind::Revoke => Some(EDIT_ATTR_SENDER_REVOKE),
        _ => None,
    }
}

/// The `<enc mediatype>` for a content kind, if it is media.
pub fn media_type(kind: ContentKind) -> Option<&'static str> {
    Some(match kind {
        ContentKind::Image => "image",
        ContentKind::Audio => "audio",
        ContentKind::Voice => "ptt",
        ContentKind::Video => "video",
        ContentKind::Document => "document",
        ContentKind::Location => "location",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))
    }

    fn leaf_context() -> BoxedStrategy<Option<ContextInfo>> {
        proptest::option::of(
            (opt_text(), opt_text()).prop_map(|(stanza_id, participant)| ContextInfo {
                stanza_id,
                participant,
                quoted_message: None,
            }),
        )
        .boxed()
    }

    fn image() -> BoxedStrategy<ImageMessage> {
        (
            (opt_text(), opt_text(), opt_text(), opt_bytes()),
            (
                any::<Option<u64>>(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
            ),
            (opt_bytes(), opt_bytes(), opt_text(), any::<Option<i64>>()),
            leaf_context(),
        )
            .prop_map(
                |(
                    (url, mimetype, caption, file_sha256),
                    (file_length, height, width),
                    (media_key, file_enc_sha256, direct_path, media_key_timestamp),
                    context_info,
                )| ImageMessage {
                    url,
                    mimetype,
                    caption,
                    file_sha256,
                    file_length,
                    height,
                    width,
                    media_key,
                    file_enc_sha256,
                    direct_path,
                    media_key_timestamp,
                    context_info,
                },
            )
            .boxed()
    }

    fn audio() -> BoxedStrategy<AudioMessage> {
        (
            (opt_text(), opt_text(), opt_bytes(), any::<Option<u64>>()),
            (any::<Option<u32>>(), any::<Option<bool>>(), opt_bytes()),
            (opt_bytes(), opt_text(), any::<Option<i64>>()),
            leaf_context(),
        )
            .prop_map(
                |(
                    (url, mimetype, file_sha256, file_length),
                    (seconds, ptt, media_key),
                    (file_enc_sha256, direct_path, media_key_timestamp),
                    context_info,
                )| AudioMessage {
                    url,
                    mimetype,
                    file_sha256,
                    file_length,
                    seconds,
                    ptt,
                    media_key,
                    file_enc_sha256,
                    direct_path,
                    media_key_timestamp,
                    context_info,
                },
            )
            .boxed()
    }

    fn video() -> BoxedStrategy<VideoMessage> {
        (
            (opt_text(), opt_text(), opt_bytes(), any::<Option<u64>>()),
            (any::<Option<u32>>(), opt_bytes(), opt_text()),
            (any::<Option<u32>>(), any::<Option<u32>>(), opt_bytes()),
            (opt_text(), any::<Option<i64>>(), leaf_context()),
        )
            .prop_map(
                |(
                    (url, mimetype, file_sha256, file_length),
                    (seconds, media_key, caption),
                    (height, width, file_enc_sha256),
                    (direct_path, media_key_timestamp, context_info),
                )| VideoMessage {
                    url,
                    mimetype,
                    file_sha256,
                    file_length,
                    seconds,
                    media_key,
                    caption,
                    height,
                    width,
                    file_enc_sha256,
                    direct_path,
                    media_key_timestamp,
                    context_info,
                },
            )
            .boxed()
    }

    fn document() -> BoxedStrategy<DocumentMessage> {
        (
            (opt_text(), opt_text(), opt_text(), opt_bytes()),
            (any::<Option<u64>>(), opt_bytes(), opt_text(), opt_bytes()),
            (opt_text(), any::<Option<i64>>(), leaf_context(), opt_text()),
        )
            .prop_map(
                |(
                    (url, mimetype, title, file_sha256),
                    (file_length, media_key, file_name, file_enc_sha256),
                    (direct_path, media_key_timestamp, context_info, caption),
                )| DocumentMessage {
                    url,
                    mimetype,
                    title,
                    file_sha256,
                    file_length,
                    media_key,
                    file_name,
                    file_enc_sha256,
                    direct_path,
                    media_key_timestamp,
                    context_info,
                    caption,
                },
            )
            .boxed()
    }

    fn reaction() -> BoxedStrategy<ReactionMessage> {
        let key = (opt_text(), any::<Option<bool>>(), opt_text(), opt_text()).prop_map(
            |(remote_jid, from_me, id, participant)| MessageKey {
                remote_jid,
                from_me,
                id,
                participant,
            },
        );
        (proptest::option::of(key), opt_text(), any::<Option<i64>>())
            .prop_map(|(key, text, sender_timestamp_ms)| ReactionMessage {
                key,
                text,
                sender_timestamp_ms,
            })
            .boxed()
    }

    /// One message of any single kind, without reply context.
    fn leaf_message() -> BoxedStrategy<Message> {
        prop_oneof![
            any::<String>().prop_map(Message::text),
            opt_text().prop_map(|text| Message {
                extended_text_message: Some(ExtendedTextMessage {
                    text,
                    context_info: None,
                }),
                ..Message::default()
            }),
            image().prop_map(|m| Message {
                image_message: Some(m),
                ..Message::default()
            }),
            audio().prop_map(|m| Message {
                audio_message: Some(m),
                ..Message::default()
            }),
            video().prop_map(|m| Message {
                video_message: Some(m),
                ..Message::default()
            }),
            document().prop_map(|m| Message {
                document_message: Some(m),
                ..Message::default()
            }),
            reaction().prop_map(|m| Message {
                reaction_message: Some(m),
                ..Message::default()
            }),
            // Finite degrees: NaN is not equal to itself, so it cannot round-trip by `==`.
            (-90.0f64..=90.0, -180.0f64..=180.0, opt_text(), opt_text())
                .prop_map(|(lat, lon, name, address)| Message::location(lat, lon, name, address)),
            (
                opt_text(),
                any::<Option<i32>>(),
                opt_text(),
                any::<Option<i64>>()
            )
                .prop_map(|(id, r#type, text, timestamp_ms)| Message {
                    protocol_message: Some(Box::new(ProtocolMessage {
                        key: Some(MessageKey {
                            id,
                            ..MessageKey::default()
                        }),
                        r#type,
                        edited_message: text.map(|t| Box::new(Message::text(t))),
                        timestamp_ms,
                    })),
                    ..Message::default()
                }),
            Just(Message::default()),
        ]
        .boxed()
    }

    /// Any kind, including replies that quote another message.
    fn any_message() -> BoxedStrategy<Message> {
        prop_oneof![
            3 => leaf_message(),
            1 => (
                any::<String>(),
                opt_text(),
                opt_text(),
                proptest::option::of(leaf_message()),
            )
                .prop_map(|(text, stanza_id, participant, quoted)| Message {
                    extended_text_message: Some(ExtendedTextMessage {
                        text: Some(text),
                        context_info: Some(ContextInfo {
                            stanza_id,
                            participant,
                            quoted_message: quoted.map(Box::new),
                        }),
                    }),
                    ..Message::default()
                }),
        ]
        .boxed()
    }

    proptest! {
        #[test]
        fn padded_encoding_round_trips_and_pads_with_n_bytes_of_n(
            msg in any_message(),
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let bytes = encode_padded(&msg, &mut rng).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let body_len = msg.encoded_len();
            let pad = bytes.len() - body_len;
            prop_assert!((1..=16).contains(&pad));
            prop_assert!(bytes[body_len..].iter().all(|&b| usize::from(b) == pad));
            prop_assert_eq!(decode_padded(&bytes), Ok(msg));
        }

        #[test]
        fn every_padding_length_round_trips(msg in any_message(), pad_len in 1u8..=16) {
            let bytes = encode_with_padding(&msg, pad_len).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(bytes.len(), msg.encoded_len() + usize::from(pad_len));
            prop_assert_eq!(decode_padded(&bytes), Ok(msg));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_reencodes_to_the_same_message(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Ok(msg) = decode_padded(&bytes) {
                let again = encode_with_padding(&msg, 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode_padded(&again), Ok(msg));
            }
        }

        #[test]
        fn message_id_always_has_the_exact_shape(
            unix_secs in any::<u64>(),
            own_user in any::<String>(),
            random in any::<[u8; 16]>(),
        ) {
            let id = message_id(unix_secs, &own_user, &random);
            prop_assert_eq!(id.as_str().len(), MESSAGE_ID_CHARS);
            prop_assert!(id.as_str().starts_with("3EB0"));
            prop_assert!(id.as_str()[4..].bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
            prop_assert_eq!(MessageId::parse(id.as_str()), Ok(id));
        }

        #[test]
        fn message_id_parse_never_panics_and_accepts_only_what_it_prints(text in any::<String>()) {
            if let Ok(id) = MessageId::parse(&text) {
                prop_assert_eq!(id.as_str(), text.as_str());
            }
        }
    }

    fn bad_padding(bytes: &[u8]) -> Option<PaddingFault> {
        match decode_padded(bytes) {
            Err(ContentError::BadPadding { fault }) => Some(fault),
            _ => None,
        }
    }

    #[test]
    fn empty_plaintext_is_rejected_as_bad_padding() {
        assert_eq!(bad_padding(&[]), Some(PaddingFault::EmptyInput));
    }

    #[test]
    fn padding_count_zero_is_rejected() {
        let mut bytes = Message::text("hi").encode_to_vec();
        bytes.push(0);
        assert_eq!(
            bad_padding(&bytes),
            Some(PaddingFault::CountOutOfRange { count: 0 })
        );
    }

    #[test]
    fn padding_count_seventeen_is_rejected_even_when_consistent() {
        let mut bytes = Message::text("hi").encode_to_vec();
        bytes.extend([17u8; 17]);
        assert_eq!(
            bad_padding(&bytes),
            Some(PaddingFault::CountOutOfRange { count: 17 })
        );
    }

    #[test]
    fn padding_with_a_differing_byte_is_rejected() {
        let mut bytes = encode_with_padding(&Message::text("hi"), 4).unwrap();
        let first_pad = bytes.len() - 4;
        bytes[first_pad] = 3;
        assert_eq!(
            bad_padding(&bytes),
            Some(PaddingFault::MismatchedByte { count: 4, found: 3 })
        );
    }

    #[test]
    fn padding_longer_than_the_plaintext_is_rejected() {
        assert_eq!(
            bad_padding(&[5, 5, 5]),
            Some(PaddingFault::CountExceedsInput { count: 5, len: 3 })
        );
    }

    #[test]
    fn padding_only_decodes_to_an_empty_message_of_unknown_kind() {
        let msg = decode_padded(&[2, 2]).unwrap();
        assert_eq!(msg, Message::default());
        assert_eq!(msg.kind(), ContentKind::Unknown);
    }

    #[test]
    fn oversize_input_is_rejected_before_padding_is_looked_at() {
        let bytes = vec![0u8; MAX_CONTENT_BYTES + 1];
        assert_eq!(
            decode_padded(&bytes),
            Err(ContentError::TooLarge {
                len: MAX_CONTENT_BYTES + 1,
                max: MAX_CONTENT_BYTES
            })
        );
    }

    #[test]
    fn input_of_exactly_the_bound_is_accepted() {
        // Field 1 (conversation), length-delimited: tag 0x0a, varint length in 3 bytes.
        let pad = 16usize;
        let text_len = MAX_CONTENT_BYTES - 1 - 3 - pad;
        let mut bytes = vec![0x0a];
        let mut n = text_len;
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
        assert_eq!(bytes.len(), 4);
        bytes.resize(4 + text_len, b'a');
        bytes.resize(MAX_CONTENT_BYTES, 16);
        let msg = decode_padded(&bytes).unwrap();
        assert_eq!(msg.text_body().map(str::len), Some(text_len));
    }

    #[test]
    fn encoding_refuses_content_over_the_bound() {
        let msg = Message::text("a".repeat(MAX_CONTENT_BYTES));
        let body_len = msg.encoded_len();
        assert_eq!(
            encode_with_padding(&msg, 1),
            Err(ContentError::TooLarge {
                len: body_len + 1,
                max: MAX_CONTENT_BYTES
            })
        );
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            encode_padded(&msg, &mut rng),
            Err(ContentError::TooLarge {
                len: body_len,
                max: MAX_BODY_BYTES
            })
        );
    }

    #[test]
    fn random_padding_refuses_a_body_that_only_small_padding_would_fit() {
        // Body of MAX_BODY_BYTES + 1: padding 1..=15 would fit, 16 would not.
        let text_len = MAX_BODY_BYTES + 1 - 4;
        let msg = Message::text("a".repeat(text_len));
        assert_eq!(msg.encoded_len(), MAX_BODY_BYTES + 1);
        for seed in 0..32 {
            let mut rng = StdRng::seed_from_u64(seed);
            assert!(matches!(
                encode_padded(&msg, &mut rng),
                Err(ContentError::TooLarge { .. })
            ));
        }
        assert!(encode_with_padding(&msg, 15).is_ok());
    }

    #[test]
    fn padding_length_outside_one_to_sixteen_is_refused() {
        for pad_len in [0u8, 17, 255] {
            assert_eq!(
                encode_with_padding(&Message::text("x"), pad_len),
                Err(ContentError::PaddingLengthOutOfRange { pad_len })
            );
        }
    }

    #[test]
    fn random_padding_draws_every_length_from_one_to_sixteen() {
        let mut rng = StdRng::seed_from_u64(1);
        let msg = Message::text("x");
        let body_len = msg.encoded_len();
        let mut seen = [false; 17];
        for _ in 0..2000 {
            let bytes = encode_padded(&msg, &mut rng).unwrap();
            seen[bytes.len() - body_len] = true;
        }
        assert!(!seen[0]);
        assert!(seen[1..].iter().all(|&s| s));
    }

    #[test]
    fn invalid_utf8_text_is_a_protobuf_error() {
        let bytes = [0x0a, 0x02, 0xff, 0xfe, 0x01];
        assert!(matches!(
            decode_padded(&bytes),
            Err(ContentError::Protobuf { .. })
        ));
    }

    #[test]
    fn truncated_field_is_a_protobuf_error() {
        let bytes = [0x0a, 0x05, b'h', b'i', 0x01];
        assert!(matches!(
            decode_padded(&bytes),
            Err(ContentError::Protobuf { .. })
        ));
    }

    #[test]
    fn nesting_beyond_the_recursion_limit_is_a_protobuf_error() {
        let mut msg = Message::text("bottom");
        for _ in 0..60 {
            msg = Message::reply(
                "up",
                "3EB0000000000000000000",
                "x@s.whatsapp.net",
                Some(msg),
            );
        }
        let bytes = encode_with_padding(&msg, 1).unwrap();
        assert!(matches!(
            decode_padded(&bytes),
            Err(ContentError::Protobuf { .. })
        ));
    }

    #[test]
    fn fields_we_do_not_model_are_skipped() {
        // Field 26 (WhatsApp's stickerMessage) with an empty body, then padding.
        let bytes = [0xd2, 0x01, 0x00, 0x01];
        let msg = decode_padded(&bytes).unwrap();
        assert_eq!(msg.kind(), ContentKind::Unknown);
    }

    #[test]
    fn kind_distinguishes_voice_notes_from_audio() {
        let audio = |ptt| Message {
            audio_message: Some(AudioMessage {
                ptt,
                ..AudioMessage::default()
            }),
            ..Message::default()
        };
        assert_eq!(audio(Some(true)).kind(), ContentKind::Voice);
        assert_eq!(audio(Some(false)).kind(), ContentKind::Audio);
        assert_eq!(audio(None).kind(), ContentKind::Audio);
        assert!(ContentKind::Voice.is_media());
        assert!(!ContentKind::Reaction.is_media());
    }

    #[test]
    fn kind_names_each_message_field() {
        let cases = [
            (Message::text("a"), ContentKind::Text),
            (Message::reply("a", "b", "c", None), ContentKind::Text),
            (
                Message {
                    image_message: Some(ImageMessage::default()),
                    ..Message::default()
                },
                ContentKind::Image,
            ),
            (
                Message {
                    video_message: Some(VideoMessage::default()),
                    ..Message::default()
                },
                ContentKind::Video,
            ),
            (
                Message {
                    document_message: Some(DocumentMessage::default()),
                    ..Message::default()
                },
                ContentKind::Document,
            ),
            (
                Message::reaction(MessageKey::default(), "👍", 1),
                ContentKind::Reaction,
            ),
            (Message::default(), ContentKind::Unknown),
        ];
        for (msg, kind) in cases {
            assert_eq!(msg.kind(), kind, "{}", kind.as_str());
        }
    }

    #[test]
    fn text_body_reads_conversation_or_extended_text() {
        assert_eq!(Message::text("one").text_body(), Some("one"));
        assert_eq!(
            Message::reply("two", "id", "p", None).text_body(),
            Some("two")
        );
        assert_eq!(Message::default().text_body(), None);
    }

    #[test]
    fn reply_to_reads_the_stanza_id_of_text_and_media_replies() {
        let reply = Message::reply(
            "yes",
            "3EB0ABCDEF0123456789AB",
            "p",
            Some(Message::text("q")),
        );
        assert_eq!(reply.reply_to(), Some("3EB0ABCDEF0123456789AB"));
        let image_reply = Message {
            image_message: Some(ImageMessage {
                context_info: Some(ContextInfo {
                    stanza_id: Some("S".into()),
                    ..ContextInfo::default()
                }),
                ..ImageMessage::default()
            }),
            ..Message::default()
        };
        assert_eq!(image_reply.reply_to(), Some("S"));
        assert_eq!(Message::text("plain").reply_to(), None);
    }

    #[test]
    fn message_id_parse_rejects_every_other_shape() {
        for bad in [
            "",
            "3EB0",
            "3EB00123456789ABCDEF0",
            "3EB00123456789ABCDEF012",
            "3EB00123456789abcdef01",
            "3EB10123456789ABCDEF01",
            "3eb00123456789ABCDEF01",
            "3EB00123456789ABCDEFG1",
            "3EB00123456789ABCDEF0 ",
            "3EB00123456789ABCDEFÉ",
        ] {
            assert_eq!(
                MessageId::parse(bad),
                Err(ContentError::BadMessageId { len: bad.len() }),
                "{bad:?}"
            );
        }
        let good = MessageId::parse("3EB00123456789ABCDEF01").unwrap();
        assert_eq!(good.to_string(), "3EB00123456789ABCDEF01");
        assert_eq!(format!("{good:?}"), "MessageId(3EB00123456789ABCDEF01)");
    }
}
