//! Tests of the binary node codec: fixed vectors written by an independent encoder
//! (tests/data/wa_binary/, see its README), every refusal, and round-trip properties.

use proptest::prelude::*;

use super::*;
use crate::stanza::{Content, MAX_DEPTH, Stanza, StanzaError};

fn ping() -> Stanza {
    Stanza::new("iq")
        .attr("id", "1a2B")
        .attr("xmlns", "w:p")
        .attr("type", "get")
        .attr("to", "s.whatsapp.net")
        .child(Stanza::new("ping"))
}

fn round_trip(stanza: &Stanza, writer: Writer) -> Result<Stanza, BinaryError> {
    parse_binary(&stanza.to_binary(writer)?, writer)
}

/// Hex of a vector file: one frame payload, whitespace ignored, `#` lines are comments.
fn vector(text: &str) -> Vec<u8> {
    let hex: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ping_uses_tokens_and_decodes_back() {
    let bytes = ping().to_binary(Writer::Client).unwrap();
    // flags, LIST_8 of 1 + 2*4 + 1 items, then the single-byte token for "iq".
    assert_eq!(&bytes[..3], &[0, 248, 10]);
    assert_eq!(
        token::index_of_token("iq"),
        Some(token::TokenKind::Single(bytes[3]))
    );
    assert_eq!(parse_binary(&bytes, Writer::Client), Ok(ping()));
}

#[test]
fn independent_encoder_vectors_decode_to_the_stanzas_they_were_made_from() {
    let ping_vector = vector(include_str!("../../../../tests/data/wa_binary/ping.hex"));
    assert_eq!(parse_binary(&ping_vector, Writer::Client), Ok(ping()));
    // Our encoder writes the same bytes the independent one did for this stanza.
    assert_eq!(ping().to_binary(Writer::Client).unwrap(), ping_vector);

    let message = Stanza::new("message")
        .attr("id", "3EB0C431C26A1916E2A4")
        .attr("type", "text")
        .attr("to", "4915112345678@s.whatsapp.net")
        .child(
            Stanza::new("participants").child(
                Stanza::new("to")
                    .attr("jid", "4915112345678:2@s.whatsapp.net")
                    .child(
                        Stanza::new("enc")
                            .attr("v", "2")
                            .attr("type", "pkmsg")
                            .bytes(vec![0x33, 0x08, 0x01, 0xff, 0x00]),
                    ),
            ),
        );
    let message_vector = vector(include_str!("../../../../tests/data/wa_binary/message.hex"));
    assert_eq!(
        parse_binary(&message_vector, Writer::Client),
        Ok(message.clone())
    );
    assert_eq!(message.to_binary(Writer::Client).unwrap(), message_vector);
}

#[test]
fn interop_jid_carries_its_server_only_when_the_server_writes_it() {
    let stanza = Stanza::new("receipt").attr("from", "7-home.door:1@interop");
    let client = stanza.to_binary(Writer::Client).unwrap();
    let server = stanza.to_binary(Writer::Server).unwrap();
    assert!(client.contains(&token::INTEROP_JID));
    assert_eq!(server.len(), client.len() + 2 + "interop".len());
    assert!(server.ends_with(b"interop"));
    assert_eq!(parse_binary(&client, Writer::Client), Ok(stanza.clone()));
    assert_eq!(parse_binary(&server, Writer::Server), Ok(stanza));
    // Read with the wrong expectation, the frame is refused, never misread.
    assert!(parse_binary(&client, Writer::Server).is_err());
    assert!(parse_binary(&server, Writer::Client).is_err());
}

#[test]
fn jid_shaped_text_is_written_in_its_own_form() {
    let form = |text| jid_form(text);
    assert_eq!(
        form("7-home:1@interop"),
        Some(JidForm::Interop {
            user: "home",
            device: 1,
            integrator: 7
        })
    );
    assert_eq!(
        form("4915112345678:3@s.whatsapp.net"),
        Some(JidForm::Ad {
            domain: 0,
            device: 3,
            user: "4915112345678"
        })
    );
    assert_eq!(
        form("123:0@lid"),
        Some(JidForm::Pair {
            user: "123:0",
            server: "lid"
        })
    );
    assert_eq!(
        form("acme-home:1@interop"),
        Some(JidForm::Pair {
            user: "acme-home:1",
            server: "interop"
        })
    );
    assert_eq!(
        form("7-home:01@interop"),
        Some(JidForm::Pair {
            user: "7-home:01",
            server: "interop"
        })
    );
    assert_eq!(form("no-at-sign"), None);
    assert_eq!(form("trailing@"), None);
}

#[test]
fn ad_jid_of_device_zero_reads_as_the_user() {
    // AD_JID, domain 0, device 0, user "12345" packed as nibbles.
    let bytes = [
        0, 248, 3, 0x05, 0x12, 247, 0, 0, 255, 0x83, 0x12, 0x34, 0x5f,
    ];
    let from = token::index_of_token("from").unwrap();
    let token::TokenKind::Single(from) = from else {
        panic!("`from` is a single-byte token")
    };
    let mut bytes = bytes.to_vec();
    bytes[4] = from;
    let stanza = parse_binary(&bytes, Writer::Server).unwrap();
    assert_eq!(stanza.attr_value("from"), Some("12345@s.whatsapp.net"));
}

#[test]
fn empty_frame_and_trailing_bytes_are_refused() {
    assert_eq!(
        parse_binary(&[], Writer::Client),
        Err(BinaryError::EmptyFrame)
    );
    let mut bytes = ping().to_binary(Writer::Client).unwrap();
    let end = bytes.len() - 1;
    bytes.push(0);
    assert_eq!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::TrailingBytes { offset: end })
    );
}

#[test]
fn every_truncation_is_refused_as_such() {
    let bytes = Stanza::new("message")
        .attr("to", "7-home:1@interop")
        .attr("id", "a long raw identifier")
        .bytes(vec![9; 300])
        .to_binary(Writer::Client)
        .unwrap();
    for cut in 1..bytes.len() {
        let result = parse_binary(&bytes[..cut], Writer::Client);
        assert!(
            matches!(result, Err(BinaryError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn unknown_double_token_and_unassigned_tags_are_refused() {
    // A node [tag] whose tag is dictionary 3 index 255: dictionary 3 has 256 entries, so
    // use an unassigned tag byte instead and a node list of length 0.
    assert_eq!(
        parse_binary(&[0, 248, 1, 242], Writer::Client),
        Err(BinaryError::UnexpectedTag {
            offset: 2,
            tag: 242
        })
    );
    assert_eq!(
        parse_binary(&[0, 0], Writer::Client),
        Err(BinaryError::BadNode { offset: 0 })
    );
    assert_eq!(
        parse_binary(&[0, 7], Writer::Client),
        Err(BinaryError::UnexpectedTag { offset: 0, tag: 7 })
    );
}

#[test]
fn nesting_past_the_bound_is_refused_before_it_is_read() {
    let mut stanza = Stanza::new("leaf");
    for _ in 1..MAX_DEPTH {
        stanza = Stanza::new("n").child(stanza);
    }
    assert_eq!(round_trip(&stanza, Writer::Client), Ok(stanza.clone()));
    // One more level, written by hand since to_binary refuses it.
    let mut bytes = vec![0, 248, 2, 252, 1, b'n', 248, 1];
    bytes.extend_from_slice(&stanza.to_binary(Writer::Client).unwrap()[1..]);
    assert!(matches!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::Stanza(StanzaError::TooDeep { .. }))
    ));
}

#[test]
fn too_many_attributes_are_refused_from_the_list_length() {
    // LIST_16 announcing 2 * 40 + 1 items, with nothing after: refused without reading on.
    assert!(matches!(
        parse_binary(&[0, 249, 0, 81], Writer::Client),
        Err(BinaryError::Stanza(StanzaError::TooManyAttributes { .. }))
    ));
}

#[test]
fn repeated_attribute_and_bad_utf8_are_refused() {
    let id = |v: u8| [252, 1, v];
    let mut bytes = vec![0, 248, 5, 252, 1, b'a'];
    bytes.extend(id(b'k'));
    bytes.extend(id(b'1'));
    bytes.extend(id(b'k'));
    bytes.extend(id(b'2'));
    assert!(matches!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::Stanza(StanzaError::DuplicateAttribute { .. }))
    ));
    assert_eq!(
        parse_binary(&[0, 248, 1, 252, 1, 0xff], Writer::Client),
        Err(BinaryError::BadString { offset: 2 })
    );
}

#[test]
fn packed_text_outside_its_alphabet_is_refused() {
    // NIBBLE_8 with nibble 12, which has no character.
    assert_eq!(
        parse_binary(&[0, 248, 1, 255, 0x01, 0xc1], Writer::Client),
        Err(BinaryError::BadString { offset: 2 })
    );
}

#[test]
fn nested_and_malformed_jids_are_refused() {
    // JID_PAIR whose user is itself a JID_PAIR. Offsets count from the node, after the flags.
    let pair = [250, 252, 1, b'u', 252, 1, b's'];
    let mut bytes = vec![0, 248, 3, 252, 1, b'a', 252, 1, b'k', 250];
    bytes.extend(pair);
    bytes.extend([252, 1, b's']);
    assert_eq!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::BadJid { offset: 9 })
    );
    // AD_JID with domain type 7, which stands for no server.
    let bytes = [
        0, 248, 3, 252, 1, b'a', 252, 1, b'k', 247, 7, 1, 252, 1, b'u',
    ];
    assert_eq!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::BadJid { offset: 8 })
    );
    // JID_PAIR with an empty server.
    let bytes = [0, 248, 3, 252, 1, b'a', 252, 1, b'k', 250, 252, 1, b'u', 0];
    assert_eq!(
        parse_binary(&bytes, Writer::Client),
        Err(BinaryError::BadJid { offset: 8 })
    );
}

#[test]
fn compressed_node_inflates_and_a_bad_stream_is_refused() {
    let compressed = vector(include_str!(
        "../../../../tests/data/wa_binary/ping_zlib.hex"
    ));
    assert_eq!(compressed[0] & 2, 2);
    assert_eq!(parse_binary(&compressed, Writer::Client), Ok(ping()));
    assert_eq!(
        parse_binary(&[2, 0x78, 0x9c, 1, 2, 3], Writer::Client),
        Err(BinaryError::BadCompression)
    );
}

#[test]
fn string_content_reads_as_its_bytes_and_empty_content_as_empty() {
    // <a>"get"</a> with the content as a token.
    let token::TokenKind::Single(get) = token::index_of_token("get").unwrap() else {
        panic!("`get` is a single-byte token")
    };
    let bytes = [0, 248, 2, 252, 1, b'a', get];
    assert_eq!(
        parse_binary(&bytes, Writer::Client),
        Ok(Stanza::new("a").bytes(b"get".to_vec()))
    );
    let empty_list = [0, 248, 2, 252, 1, b'a', 0];
    let empty_bytes = [0, 248, 2, 252, 1, b'a', 252, 0];
    assert_eq!(
        parse_binary(&empty_list, Writer::Client),
        Ok(Stanza::new("a"))
    );
    assert_eq!(
        parse_binary(&empty_bytes, Writer::Client),
        Ok(Stanza::new("a"))
    );
}

#[test]
fn invalid_stanza_is_not_encoded() {
    let stanza = Stanza::new("a").attr("b", "c").attr("bad name", "x");
    assert!(matches!(
        stanza.to_binary(Writer::Client),
        Err(BinaryError::Stanza(StanzaError::InvalidName { .. }))
    ));
}

// ---- properties -------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z_][A-Za-z0-9_.:-]{0,11}",
        prop::sample::select(vec![
            "iq", "message", "to", "enc", "type", "id", "xmlns", "v"
        ])
        .prop_map(str::to_owned),
    ]
}

/// Values that exercise every string form: tokens, packed nibbles and hex, each JID form and
/// the edges around them, and arbitrary text.
fn value() -> impl Strategy<Value = String> {
    let text = prop::collection::vec(any::<char>(), 0..24).prop_map(|chars| {
        chars
            .into_iter()
            .map(|c| {
                if crate::stanza::xml::is_attr_value_char(c) {
                    c
                } else {
                    '?'
                }
            })
            .collect::<String>()
    });
    prop_oneof![
        text,
        prop::sample::select(vec![
            "",
            "get",
            "result",
            "s.whatsapp.net",
            "interop",
            "pkmsg",
            "0",
            "-",
            "read-self",
        ])
        .prop_map(str::to_owned),
        "[0-9.-]{1,130}",
        "[0-9A-F]{1,130}",
        "[0-9a-z-]{0,4}(:[0-9]{1,6})?@(interop|s.whatsapp.net|lid|hosted|hosted.lid|msgr|g.us|x)",
        "[0-9]{1,6}-[a-z.:-]{0,6}:[0-9]{1,6}@interop",
        "@?[a-z@:]{0,5}@[a-z@:]{0,5}",
    ]
}

fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), value()), 0..5).prop_map(|mut attrs| {
        let mut seen = std::collections::HashSet::new();
        attrs.retain(|(k, _)| seen.insert(k.clone()));
        attrs
    })
}

fn stanza() -> impl Strategy<Value = Stanza> {
    let content = prop_oneof![
        Just(Content::Empty),
        prop::collection::vec(any::<u8>(), 1..300).prop_map(Content::Bytes),
    ];
    let leaf = (name(), attrs(), content).prop_map(|(tag, attrs, content)| Stanza {
        tag,
        attrs,
        content,
    });
    leaf.prop_recursive(5, 48, 6, |inner| {
        (name(), attrs(), prop::collection::vec(inner, 1..6)).prop_map(|(tag, attrs, children)| {
            Stanza {
                tag,
                attrs,
                content: Content::Children(children),
            }
        })
    })
}

fn writer() -> impl Strategy<Value = Writer> {
    prop_oneof![Just(Writer::Client), Just(Writer::Server)]
}

proptest! {
    #[test]
    fn every_valid_stanza_means_the_same_in_both_encodings(stanza in stanza(), writer in writer()) {
        prop_assume!(stanza.validate().is_ok());
        let binary = stanza.to_binary(writer).unwrap();
        let xml = stanza.to_xml();
        prop_assert_eq!(parse_binary(&binary, writer).ok(), crate::stanza::parse(&xml).ok());
        prop_assert_eq!(parse_binary(&binary, writer), Ok(stanza));
    }

    #[test]
    fn parse_never_panics_and_what_parses_round_trips(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        writer in writer(),
    ) {
        if let Ok(stanza) = parse_binary(&bytes, writer) {
            prop_assert_eq!(stanza.validate(), Ok(()));
            prop_assert_eq!(round_trip(&stanza, writer), Ok(stanza));
        }
    }

    #[test]
    fn mutated_frames_never_panic(stanza in stanza(), writer in writer(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        prop_assume!(stanza.validate().is_ok());
        let mut bytes = stanza.to_binary(writer).unwrap();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(stanza) = parse_binary(&bytes, writer) {
            prop_assert_eq!(round_trip(&stanza, writer), Ok(stanza));
        }
    }
}
