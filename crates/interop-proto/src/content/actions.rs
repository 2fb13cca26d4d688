//! The content shapes that act on an earlier message or share a place: edits and deletes
//! for everyone (`protocolMessage`), locations (`locationMessage`), and their constructors
//! and accessors on [`Message`]. Field numbers are WhatsApp's (see `proto/content.proto`).
//!
//! Sans-I/O like the rest of `content`: no I/O, no clock (timestamps are passed in), no
//! randomness.

use super::{ContentKind, Message, MessageKey};

/// `protocolMessage.type` of a delete for everyone.
pub const PROTOCOL_TYPE_REVOKE: i32 = 0;
/// `protocolMessage.type` of an edit.
pub const PROTOCOL_TYPE_MESSAGE_EDIT: i32 = 14;
/// The `<message edit>` attribute of an edit.
pub const EDIT_ATTR_MESSAGE_EDIT: &str = "1";
/// The `<message edit>` attribute of a delete for everyone by the message's sender.
pub const EDIT_ATTR_SENDER_REVOKE: &str = "7";

/// A control message about an earlier one, named by `key`. We model two types: an edit
/// ([`PROTOCOL_TYPE_MESSAGE_EDIT`], the new content in `edited_message`) and a delete for
/// everyone ([`PROTOCOL_TYPE_REVOKE`]). Other types decode to kind `Unknown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtocolMessage {
    #[prost(message, optional, tag = "1")]
    pub key: Option<MessageKey>,
    /// proto2 enum `Type`; absent reads as its first value, `REVOKE`.
    #[prost(int32, optional, tag = "2")]
    pub r#type: Option<i32>,
    /// The new content of an edit.
    #[prost(message, optional, boxed, tag = "14")]
    pub edited_message: Option<Box<Message>>,
    /// When the edit was made, in milliseconds since the Unix epoch.
    #[prost(int64, optional, tag = "15")]
    pub timestamp_ms: Option<i64>,
}

/// `Message.editedMessage` (WhatsApp's `FutureProofMessage`): a wrapper around a message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FutureProofMessage {
    #[prost(message, optional, boxed, tag = "1")]
    pub message: Option<Box<Message>>,
}

/// A pin on the map: degrees as WGS84 doubles, and an optional name and address.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocationMessage {
    #[prost(double, optional, tag = "1")]
    pub degrees_latitude: Option<f64>,
    #[prost(double, optional, tag = "2")]
    pub degrees_longitude: Option<f64>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub address: Option<String>,
    #[prost(message, optional, tag = "17")]
    pub context_info: Option<super::ContextInfo>,
}

impl ProtocolMessage {
    /// `Edit`, `Revoke` or `Unknown` (another type, or no key naming a message).
    pub fn kind(&self) -> ContentKind {
        if self.key.as_ref().and_then(|k| k.id.as_ref()).is_none() {
            return ContentKind::Unknown;
        }
        match self.r#type.unwrap_or(PROTOCOL_TYPE_REVOKE) {
            PROTOCOL_TYPE_REVOKE => ContentKind::Revoke,
            PROTOCOL_TYPE_MESSAGE_EDIT if self.edited_message.is_some() => ContentKind::Edit,
            _ => ContentKind::Unknown,
        }
    }
}

impl Message {
    /// An edit of message `key` to `edited` (a text), made at `timestamp_ms`.
    pub fn edit(key: MessageKey, edited: Message, timestamp_ms: i64) -> Self {
        Self::protocol_message(ProtocolMessage {
            key: Some(key),
            r#type: Some(PROTOCOL_TYPE_MESSAGE_EDIT),
            edited_message: Some(Box::new(edited)),
            timestamp_ms: Some(timestamp_ms),
        })
    }

    /// A delete for everyone of message `key`.
    pub fn revoke(key: MessageKey) -> Self {
        Self::protocol_message(ProtocolMessage {
            key: Some(key),
            r#type: Some(PROTOCOL_TYPE_REVOKE),
            edited_message: None,
            timestamp_ms: None,
        })
    }

    fn protocol_message(p: ProtocolMessage) -> Self {
        Self {
            protocol_message: Some(Box::new(p)),
            ..Self::default()
        }
    }

    /// A location; the caller has checked the ranges (they are the API's to judge).
    pub fn location(lat: f64, lon: f64, name: Option<String>, address: Option<String>) -> Self {
        Self {
            location_message: Some(LocationMessage {
                degrees_latitude: Some(lat),
                degrees_longitude: Some(lon),
                name,
                address,
                context_info: None,
            }),
            ..Self::default()
        }
    }

    /// Whether every location in this message, and in every message it quotes or carries as
    /// an edit, has finite coordinates. NaN or infinity means nothing on a map, and NaN does
    /// not even equal itself, so `decode_padded` refuses such content wherever it is nested
    /// (the content_decode fuzzer found a NaN latitude). The depth is bounded by prost's
    /// decode recursion limit.
    pub(super) fn locations_are_finite(&self) -> bool {
        let own = self.location_message.as_ref().is_none_or(|l| {
            [l.degrees_latitude, l.degrees_longitude]
                .into_iter()
                .flatten()
                .all(f64::is_finite)
        });
        let contexts = [
            self.extended_text_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
            self.image_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
            self.video_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
            self.audio_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
            self.document_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
            self.location_message
                .as_ref()
                .and_then(|m| m.context_info.as_ref()),
        ];
        let nested = contexts
            .into_iter()
            .flatten()
            .filter_map(|c| c.quoted_message.as_deref())
            .chain(
                self.protocol_message
                    .as_ref()
                    .and_then(|p| p.edited_message.as_deref()),
            )
            .chain(
                self.edited_message
                    .as_ref()
                    .and_then(|f| f.message.as_deref()),
            );
        own && nested.into_iter().all(Message::locations_are_finite)
    }

    /// The `protocolMessage`, bare or inside `editedMessage` (one level; deeper is ignored).
    pub fn protocol(&self) -> Option<&ProtocolMessage> {
        self.protocol_message.as_deref().or_else(|| {
            self.edited_message
                .as_ref()?
                .message
                .as_ref()?
                .protocol_message
                .as_deref()
        })
    }

    /// For an edit: the id of the message edited and its new text (`None` when the new
    /// content has no text).
    pub fn edit_of(&self) -> Option<(&str, Option<&str>)> {
        let p = self.protocol()?;
        if p.kind() != ContentKind::Edit {
            return None;
        }
        let id = p.key.as_ref()?.id.as_deref()?;
        Some((id, p.edited_message.as_deref().and_then(Message::text_body)))
    }

    /// For a delete for everyone: the id of the message deleted.
    pub fn revoke_of(&self) -> Option<&str> {
        let p = self.protocol()?;
        if p.kind() != ContentKind::Revoke {
            return None;
        }
        p.key.as_ref()?.id.as_deref()
    }

    /// The message this one names: the reply's quoted id, the reaction's, edit's or revoke's
    /// key. Correlation follows it.
    pub fn refers_to(&self) -> Option<&str> {
        if let Some(id) = self
            .reaction_message
            .as_ref()
            .and_then(|r| r.key.as_ref()?.id.as_deref())
        {
            return Some(id);
        }
        self.reply_to()
            .or_else(|| self.edit_of().map(|(id, _)| id))
            .or_else(|| self.revoke_of())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{
        ContentError, decode_padded, encode_with_padding, media_type, stanza_edit, stanza_type,
    };
    use prost::Message as _;

    fn key(id: &str) -> MessageKey {
        MessageKey {
            remote_jid: Some("15550100@s.whatsapp.net".into()),
            from_me: Some(true),
            id: Some(id.into()),
            participant: None,
        }
    }

    #[test]
    fn an_edit_is_protocol_message_type_14_with_the_new_text_and_edit_attribute_1() {
        let m = Message::edit(key("3EB0AA"), Message::text("new"), 1_700_000_000_000);
        assert_eq!(m.kind(), ContentKind::Edit);
        assert_eq!(m.edit_of(), Some(("3EB0AA", Some("new"))));
        assert_eq!(m.revoke_of(), None);
        assert_eq!(stanza_type(m.kind()), "text");
        assert_eq!(stanza_edit(m.kind()), Some("1"));
        // Message field 12 (tag 0x62), then ProtocolMessage: key=1 (0x0a) … type=2 (0x10) 14.
        let bytes = m.encode_to_vec();
        assert_eq!(bytes[0], 0x62);
        assert!(bytes.windows(2).any(|w| w == [0x10, 14]));
    }

    #[test]
    fn a_revoke_is_protocol_message_type_0_and_edit_attribute_7() {
        let m = Message::revoke(key("3EB0BB"));
        assert_eq!(m.kind(), ContentKind::Revoke);
        assert_eq!(m.revoke_of(), Some("3EB0BB"));
        assert_eq!(m.refers_to(), Some("3EB0BB"));
        assert_eq!(stanza_edit(m.kind()), Some("7"));
        // type 0 is present on the wire, not left to the default.
        assert!(m.encode_to_vec().windows(2).any(|w| w == [0x10, 0]));
    }

    #[test]
    fn an_edit_wrapped_in_edited_message_reads_as_an_edit() {
        let inner = Message::edit(key("3EB0CC"), Message::text("fixed"), 5);
        let wrapped = Message {
            edited_message: Some(Box::new(FutureProofMessage {
                message: Some(Box::new(inner)),
            })),
            ..Message::default()
        };
        let again = decode_padded(&encode_with_padding(&wrapped, 3).unwrap()).unwrap();
        assert_eq!(again.kind(), ContentKind::Edit);
        assert_eq!(again.edit_of(), Some(("3EB0CC", Some("fixed"))));
    }

    #[test]
    fn other_protocol_types_and_keyless_ones_are_unknown() {
        let mut p = ProtocolMessage {
            key: Some(key("3EB0DD")),
            r#type: Some(3),
            ..ProtocolMessage::default()
        };
        assert_eq!(p.kind(), ContentKind::Unknown);
        p.r#type = Some(PROTOCOL_TYPE_MESSAGE_EDIT);
        assert_eq!(
            p.kind(),
            ContentKind::Unknown,
            "an edit without new content"
        );
        p.r#type = None;
        assert_eq!(p.kind(), ContentKind::Revoke, "proto2 default is REVOKE");
        p.key = None;
        assert_eq!(p.kind(), ContentKind::Unknown);
    }

    #[test]
    fn a_location_is_media_with_mediatype_location_and_doubles_on_the_wire() {
        let m = Message::location(52.52, 13.405, Some("Home".into()), None);
        assert_eq!(m.kind(), ContentKind::Location);
        assert_eq!(stanza_type(m.kind()), "media");
        assert_eq!(media_type(m.kind()), Some("location"));
        assert!(!m.kind().is_media(), "no blob to fetch");
        let bytes = m.encode_to_vec();
        // Message field 5 (0x2a), then degreesLatitude=1 as fixed64 (0x09) little-endian.
        assert_eq!(bytes[0], 0x2a);
        assert_eq!(bytes[2], 0x09);
        assert_eq!(bytes[3..11], 52.52f64.to_le_bytes());
    }

    #[test]
    fn a_location_that_is_not_finite_is_refused_wherever_it_is_nested() {
        let bad = |lat: f64, lon: f64| Message::location(lat, lon, None, None);
        let refused = |m: &Message| {
            let bytes = encode_with_padding(m, 1).unwrap();
            matches!(decode_padded(&bytes), Err(ContentError::Protobuf { .. }))
        };
        for (lat, lon) in [
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
            (f64::NEG_INFINITY, 1.0),
        ] {
            assert!(refused(&bad(lat, lon)), "bare ({lat}, {lon})");
            let quoted = Message::reply("ok", "3EB0EE", "1@s.whatsapp.net", Some(bad(lat, lon)));
            assert!(refused(&quoted), "quoted ({lat}, {lon})");
            let edit = Message::edit(key("3EB0FF"), bad(lat, lon), 5);
            assert!(refused(&edit), "as an edit ({lat}, {lon})");
        }
        // The fuzzer's shape, byte for byte: field 5, degreesLatitude = NaN, one pad byte.
        let nan = [0x2a, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f, 0x01];
        assert!(matches!(
            decode_padded(&nan),
            Err(ContentError::Protobuf { .. })
        ));
        // Finite extremes are the API's to judge, not the decoder's.
        let edge = decode_padded(&encode_with_padding(&bad(-90.0, 180.0), 1).unwrap());
        assert_eq!(edge.unwrap().kind(), ContentKind::Location);
    }

    #[test]
    fn new_kinds_round_trip_through_their_stored_byte() {
        for k in [
            ContentKind::Edit,
            ContentKind::Revoke,
            ContentKind::Location,
        ] {
            assert_eq!(ContentKind::from_byte(k.to_byte()), k);
        }
    }
}
