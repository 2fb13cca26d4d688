//! Content protobuf against an independent implementation, and message ids against
//! an independent SHA-256.
//!
//! `tests/data/content/vectors.txt` holds messages encoded by Python's protobuf runtime
//! from `proto/content.proto`; `message_ids.txt` holds ids computed with Python's
//! hashlib. Both come from `tests/data/content/make_vectors.py`, whose samples are
//! mirrored field for field in `samples()` below. This file only reads them.

use interopd::content::{
    AudioMessage, ContentKind, ContextInfo, DocumentMessage, ExtendedTextMessage,
    FutureProofMessage, ImageMessage, Message, MessageId, MessageKey, ReactionMessage,
    VideoMessage, decode_padded, encode_with_padding, message_id,
};
use prost::Message as _;

const VECTORS: &str = include_str!("data/content/vectors.txt");
const MESSAGE_IDS: &str = include_str!("data/content/message_ids.txt");

const PEER: &str = "4915112345678@s.whatsapp.net";
const OWN: &str = "acme-alice@interop";
const ID_A: &str = "3EB0A1B2C3D4E5F6A7B8C9";
const ID_B: &str = "3EB000112233445566778F";

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// `n` bytes counting up from `start`, wrapping; stands in for hashes and keys.
fn seq(start: u8, n: u8) -> Option<Vec<u8>> {
    Some((0..n).map(|i| start.wrapping_add(i)).collect())
}

fn s(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn samples() -> Vec<(&'static str, Message, ContentKind)> {
    vec![
        (
            "text",
            Message::text("Ding dong: someone is at the front door \u{1F514}"),
            ContentKind::Text,
        ),
        (
            "reply",
            Message {
                extended_text_message: Some(ExtendedTextMessage {
                    text: s("On my way"),
                    context_info: Some(ContextInfo {
                        stanza_id: s(ID_A),
                        participant: s(PEER),
                        quoted_message: Some(Box::new(Message::text("Are you home?"))),
                    }),
                }),
                ..Message::default()
            },
            ContentKind::Text,
        ),
        (
            "image",
            Message {
                image_message: Some(ImageMessage {
                    url: s("https://media.acme.example/m/9f3a"),
                    mimetype: s("image/jpeg"),
                    caption: s("Front door, 07:42"),
                    file_sha256: seq(0x00, 32),
                    file_length: Some(48213),
                    height: Some(1080),
                    width: Some(1920),
                    media_key: seq(0x20, 32),
                    file_enc_sha256: seq(0x40, 32),
                    direct_path: s("/m/9f3a"),
                    media_key_timestamp: Some(1767225600),
                    context_info: Some(ContextInfo {
                        stanza_id: s(ID_B),
                        participant: s(PEER),
                        quoted_message: None,
                    }),
                }),
                ..Message::default()
            },
            ContentKind::Image,
        ),
        (
            "audio",
            Message {
                audio_message: Some(AudioMessage {
                    url: s("https://media.acme.example/m/a001"),
                    mimetype: s("audio/mpeg"),
                    file_sha256: seq(0x60, 32),
                    file_length: Some(734003),
                    seconds: Some(42),
                    ptt: Some(false),
                    media_key: seq(0x80, 32),
                    file_enc_sha256: seq(0xA0, 32),
                    direct_path: s("/m/a001"),
                    media_key_timestamp: Some(1767225601),
                    context_info: None,
                }),
                ..Message::default()
            },
            ContentKind::Audio,
        ),
        (
            "voice",
            Message {
                audio_message: Some(AudioMessage {
                    url: s("https://media.acme.example/m/v002"),
                    mimetype: s("audio/ogg; codecs=opus"),
                    file_sha256: seq(0xC0, 32),
                    file_length: Some(9120),
                    seconds: Some(3),
                    ptt: Some(true),
                    media_key: seq(0xE0, 32),
                    file_enc_sha256: seq(0x10, 32),
                    direct_path: s("/m/v002"),
                    media_key_timestamp: Some(1767225602),
                    context_info: None,
                }),
                ..Message::default()
            },
            ContentKind::Voice,
        ),
        (
            "video",
            Message {
                video_message: Some(VideoMessage {
                    url: s("https://media.acme.example/m/c0de"),
                    mimetype: s("video/mp4"),
                    file_sha256: seq(0x30, 32),
                    file_length: Some(1 << 40),
                    seconds: Some(3600),
                    media_key: seq(0x50, 32),
                    caption: s("Garden camera"),
                    height: Some(720),
                    width: Some(1280),
                    file_enc_sha256: seq(0x70, 32),
                    direct_path: s("/m/c0de"),
                    media_key_timestamp: Some(1767225603),
                    context_info: None,
                }),
                ..Message::default()
            },
            ContentKind::Video,
        ),
        (
            "document",
            Message {
                document_message: Some(DocumentMessage {
                    url: s("https://media.acme.example/m/d0c5"),
                    mimetype: s("application/pdf"),
                    title: s("Invoice March"),
                    file_sha256: seq(0x90, 32),
                    file_length: Some(5_000_000_000),
                    media_key: seq(0xB0, 32),
                    file_name: s("invoice-2026-03.pdf"),
                    file_enc_sha256: seq(0xD0, 32),
                    direct_path: s("/m/d0c5"),
                    media_key_timestamp: Some(1767225604),
                    context_info: None,
                    caption: s("For the records"),
                }),
                ..Message::default()
            },
            ContentKind::Document,
        ),
        (
            "reaction",
            Message::reaction(
                MessageKey {
                    remote_jid: s(PEER),
                    from_me: Some(true),
                    id: s(ID_A),
                    participant: s(OWN),
                },
                "\u{1F44D}",
                1767225605123,
            ),
            ContentKind::Reaction,
        ),
        (
            "reaction_removed",
            Message {
                reaction_message: Some(ReactionMessage {
                    key: Some(MessageKey {
                        remote_jid: s(PEER),
                        from_me: Some(false),
                        id: s(ID_B),
                        participant: None,
                    }),
                    text: s(""),
                    sender_timestamp_ms: Some(1767225606000),
                }),
                ..Message::default()
            },
            ContentKind::Reaction,
        ),
        (
            "negative_timestamp",
            Message {
                image_message: Some(ImageMessage {
                    media_key_timestamp: Some(-1),
                    ..ImageMessage::default()
                }),
                ..Message::default()
            },
            ContentKind::Image,
        ),
    ]
}

fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    VECTORS
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, bytes) = line.split_once(' ').expect("name and hex");
            (name, hex(bytes))
        })
        .collect()
}

#[test]
fn every_sample_has_exactly_one_vector() {
    let names: Vec<_> = vectors().into_iter().map(|(name, _)| name).collect();
    let expected: Vec<_> = samples().into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(names, expected);
}

#[test]
fn independent_encodings_decode_to_the_messages_built_in_rust() {
    for ((name, bytes), (_, expected, kind)) in vectors().into_iter().zip(samples()) {
        let decoded = Message::decode(bytes.as_slice()).expect(name);
        assert_eq!(decoded, expected, "{name}");
        assert_eq!(decoded.kind(), kind, "{name}");
    }
}

#[test]
fn prost_encodes_every_sample_to_the_independent_bytes() {
    for ((name, bytes), (_, msg, _)) in vectors().into_iter().zip(samples()) {
        assert_eq!(msg.encode_to_vec(), bytes, "{name}");
    }
}

#[test]
fn independent_encodings_decode_through_the_padded_path() {
    for ((name, mut bytes), (_, expected, _)) in vectors().into_iter().zip(samples()) {
        bytes.extend([7u8; 7]);
        assert_eq!(decode_padded(&bytes), Ok(expected.clone()), "{name}");
        let again = encode_with_padding(&expected, 7).expect(name);
        assert_eq!(again, bytes, "{name}");
    }
}

#[test]
fn reply_vector_exposes_its_text_and_quoted_id() {
    let (_, bytes) = vectors()
        .into_iter()
        .find(|(name, _)| *name == "reply")
        .expect("reply vector");
    let msg = Message::decode(bytes.as_slice()).expect("reply decodes");
    assert_eq!(msg.text_body(), Some("On my way"));
    assert_eq!(msg.reply_to(), Some(ID_A));
}

#[test]
fn message_ids_match_an_independent_sha256() {
    let mut cases = 0;
    for line in MESSAGE_IDS.lines().filter(|line| !line.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        let [secs, user, random, expected] = fields.as_slice() else {
            panic!("malformed line {line:?}");
        };
        let user = String::from_utf8(hex(user)).expect("UTF-8 user");
        let random: [u8; 16] = hex(random).try_into().expect("16 random bytes");
        let id = message_id(secs.parse().expect("seconds"), &user, &random);
        assert_eq!(id.as_str(), *expected);
        assert_eq!(MessageId::parse(expected), Ok(id));
        cases += 1;
    }
    assert_eq!(cases, 4);
}

// ---- household shapes against WhatsApp's own schema -------------------------------------

const HOUSEHOLD_VECTORS: &str = include_str!("data/content/household_vectors.txt");

fn wa_key(from_me: bool) -> MessageKey {
    MessageKey {
        remote_jid: s(PEER),
        from_me: Some(from_me),
        id: s(ID_A),
        participant: None,
    }
}

/// Mirrors `samples()` in `tests/data/content/make_household_vectors.py`, which encodes them
/// with WhatsApp's schema (`WAProto_pb2` from pyaileys), not ours.
fn household_samples() -> Vec<(&'static str, Message, ContentKind)> {
    let wrapped = Message {
        edited_message: Some(Box::new(FutureProofMessage {
            message: Some(Box::new(Message::edit(
                wa_key(false),
                Message::text("wrapped"),
                5,
            ))),
        })),
        ..Message::default()
    };
    vec![
        (
            "household_reaction",
            Message::reaction(wa_key(false), "👍", 1_767_225_600_123),
            ContentKind::Reaction,
        ),
        (
            "household_edit",
            Message::edit(
                wa_key(true),
                Message::text("Door closed again"),
                1_767_225_660_000,
            ),
            ContentKind::Edit,
        ),
        (
            "household_revoke",
            Message::revoke(wa_key(true)),
            ContentKind::Revoke,
        ),
        ("household_wrapped_edit", wrapped, ContentKind::Edit),
        (
            "household_location",
            Message::location(
                52.520008,
                -13.404954,
                s("Alexanderplatz"),
                s("10178 Berlin"),
            ),
            ContentKind::Location,
        ),
    ]
}

#[test]
fn household_shapes_match_whatsapps_own_schema_byte_for_byte() {
    let vectors: Vec<(&str, Vec<u8>)> = HOUSEHOLD_VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, bytes) = l.split_once(' ').expect("name and hex");
            (name, hex(bytes))
        })
        .collect();
    let samples = household_samples();
    assert_eq!(vectors.len(), samples.len());
    for ((name, bytes), (want, msg, kind)) in vectors.into_iter().zip(samples) {
        assert_eq!(name, want);
        assert_eq!(msg.encode_to_vec(), bytes, "{name}: prost against WAProto");
        let decoded = Message::decode(bytes.as_slice()).expect(name);
        assert_eq!(decoded, msg, "{name}");
        assert_eq!(decoded.kind(), kind, "{name}");
    }
}
