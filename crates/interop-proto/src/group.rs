//! Groups on the wire: group JIDs (`{id}@g.us`), the participant-list hash `phash`, and the
//! shapes of a group message in both directions (docs/protocol.md, "Groups"). The stanza
//! vocabulary is WhatsApp's (whatsmeow `send.go`, Baileys `messages-send.ts`):
//!
//! - sent: one `<message to="{id}@g.us" type phash>` holding one `<enc v="2" type="skmsg">`
//!   (the SenderKeyMessage, for every member) and, for the devices that do not hold our
//!   sender key yet, `<participants><to jid><enc v="2" type="pkmsg|msg">` (pairwise; its
//!   plaintext carries `senderKeyDistributionMessage`);
//! - delivered: `<message from="{id}@g.us" participant="{sender device}">` with that
//!   device's pairwise `<enc>`, if any, then the `skmsg`.
//!
//! A sans-I/O core: no I/O, no clock, no randomness.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::jid::Jid;
use crate::signal::{Ciphertext, EncType};
use crate::stanza::Stanza;

/// Server part of group JIDs.
pub const GROUP_SERVER: &str = "g.us";
/// Longest group id (the user part of its JID), in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 32;
/// Most members of one group, in users (WhatsApp's limit).
pub const MAX_GROUP_MEMBERS: usize = 1024;
/// Longest group subject, in bytes of UTF-8.
pub const MAX_SUBJECT_BYTES: usize = 100;
/// The `<enc type>` of a SenderKeyMessage.
pub const SKMSG: &str = "skmsg";
/// Prefix of a version-2 participant-list hash.
pub const PHASH_PREFIX: &str = "2:";

/// Why a text or stanza is not a group address or group message. Always caused by whoever
/// sent it (a peer on the wire, a caller of the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// Caller or peer: not `{id}@g.us` with an id of 1..=[`MAX_GROUP_ID_BYTES`] of
    /// `[0-9-]` that starts with a digit.
    BadGroupJid,
    /// Peer: the message lacks `id`, `participant`, or a well-formed `skmsg`.
    Malformed { detail: &'static str },
}

impl std::fmt::Display for GroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupError::BadGroupJid => write!(
                f,
                "group address must be {{id}}@{GROUP_SERVER}, the id 1..={MAX_GROUP_ID_BYTES} of [0-9-]"
            ),
            GroupError::Malformed { detail } => write!(f, "malformed group message: {detail}"),
        }
    }
}

impl std::error::Error for GroupError {}

/// A group's id: the user part of its JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(String);

impl GroupId {
    /// Checks a bare id (`120363…`).
    pub fn new(id: &str) -> Result<GroupId, GroupError> {
        let ok = !id.is_empty()
            && id.len() <= MAX_GROUP_ID_BYTES
            && id.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            && id.bytes().next().is_some_and(|b| b.is_ascii_digit());
        if ok {
            Ok(GroupId(id.to_owned()))
        } else {
            Err(GroupError::BadGroupJid)
        }
    }

    /// Parses `{id}@g.us`.
    pub fn parse_jid(text: &str) -> Result<GroupId, GroupError> {
        let id = text
            .strip_suffix(GROUP_SERVER)
            .and_then(|t| t.strip_suffix('@'))
            .ok_or(GroupError::BadGroupJid)?;
        GroupId::new(id)
    }

    /// The bare id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `{id}@g.us`.
    pub fn jid(&self) -> String {
        format!("{}@{GROUP_SERVER}", self.0)
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a `to` or `from` attribute names a group.
pub fn is_group_jid(text: &str) -> bool {
    text.ends_with(&format!("@{GROUP_SERVER}"))
}

/// The participant-list hash of `devices` (device JIDs as the stanza model writes them,
/// `15550100:0@s.whatsapp.net`, `acme-home:1@interop`): `"2:"` and the unpadded standard
/// base64 of the first 6 bytes of SHA-256 over the JIDs sorted bytewise and concatenated
/// without a separator (whatsmeow's `participantListHashV2`). Order and duplicates in
/// `devices` do not matter.
pub fn phash<S: AsRef<str>>(devices: &[S]) -> String {
    let mut sorted: Vec<&str> = devices.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut h = Sha256::new();
    for d in sorted {
        h.update(d.as_bytes());
    }
    let digest = h.finalize();
    let head = digest.get(..6).unwrap_or_default();
    format!(
        "{PHASH_PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(head)
    )
}

/// A group message as a member sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingGroupMessage {
    pub id: String,
    pub group: GroupId,
    /// The stanza `type` (`text`, `media`, `reaction`).
    pub kind: String,
    pub t_secs: u64,
    /// `<enc mediatype>` of the skmsg, for media.
    pub mediatype: Option<String>,
    /// The SenderKeyMessage for every member.
    pub skmsg: Vec<u8>,
    /// Pairwise messages carrying our sender key, one per device that lacks it.
    pub distributions: Vec<(Jid, Ciphertext)>,
    /// [`phash`] over every member device we sent to (the distributed ones included).
    pub phash: String,
}

impl OutgoingGroupMessage {
    /// The `<message>` stanza: `<participants>` first (when any device needs our key),
    /// then the `skmsg`.
    pub fn to_stanza(&self) -> Stanza {
        let mut m = Stanza::new("message")
            .attr("id", self.id.as_str())
            .attr("to", self.group.jid())
            .attr("type", self.kind.as_str())
            .attr("t", self.t_secs.to_string())
            .attr("phash", self.phash.as_str());
        if !self.distributions.is_empty() {
            let tos = self.distributions.iter().map(|(jid, ct)| {
                Stanza::new("to").attr("jid", jid.to_string()).child(enc(
                    ct.kind.as_str(),
                    None,
                    ct.body.clone(),
                ))
            });
            m = m.child(Stanza::new("participants").extend_children(tos));
        }
        m.child(enc(SKMSG, self.mediatype.as_deref(), self.skmsg.clone()))
    }
}

fn enc(kind: &str, mediatype: Option<&str>, body: Vec<u8>) -> Stanza {
    let mut e = Stanza::new("enc").attr("v", "2").attr("type", kind);
    if let Some(mt) = mediatype {
        e = e.attr("mediatype", mt);
    }
    e.bytes(body)
}

/// A group message as a member receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundGroupMessage {
    pub id: String,
    pub group: GroupId,
    /// The sending device (`participant`).
    pub participant: Jid,
    /// The stanza `type`.
    pub kind: String,
    /// The sender's pairwise message to us, carrying its sender key, if it sent one.
    pub pairwise: Option<Ciphertext>,
    pub skmsg: Vec<u8>,
}

/// Reads a delivered `<message>`: `Ok(None)` when it is not from a group (`from` does not
/// end in `@g.us`), so the caller reads it as a 1:1 message.
pub fn parse_inbound(s: &Stanza) -> Result<Option<InboundGroupMessage>, GroupError> {
    let Some(from) = s.attr_value("from").filter(|f| is_group_jid(f)) else {
        return Ok(None);
    };
    let group = GroupId::parse_jid(from)?;
    let malformed = |detail| GroupError::Malformed { detail };
    let id = s.attr_value("id").ok_or(malformed("no id"))?;
    let participant = s
        .attr_value("participant")
        .and_then(|p| Jid::parse(p).ok())
        .filter(|p| p.device.is_some())
        .ok_or(malformed("participant is not a device"))?;
    let kind = s.attr_value("type").ok_or(malformed("no type"))?;
    let mut pairwise = None;
    let mut skmsg = None;
    for e in s.children_named("enc") {
        if e.attr_value("v") != Some("2") {
            return Err(malformed("enc version"));
        }
        let body = e.payload().ok_or(malformed("empty enc"))?.to_vec();
        match e.attr_value("type") {
            Some(SKMSG) if skmsg.is_none() => skmsg = Some(body),
            Some(t) if pairwise.is_none() && skmsg.is_none() => {
                let kind = EncType::parse(t).ok_or(malformed("enc type"))?;
                pairwise = Some(Ciphertext { kind, body });
            }
            _ => return Err(malformed("enc order")),
        }
    }
    Ok(Some(InboundGroupMessage {
        id: id.to_owned(),
        group,
        participant,
        kind: kind.to_owned(),
        pairwise,
        skmsg: skmsg.ok_or(malformed("no skmsg"))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::parse;

    #[test]
    fn group_ids_are_digits_and_dashes_under_g_us() {
        let g = GroupId::parse_jid("120363000000000001@g.us").unwrap();
        assert_eq!(
            (g.as_str(), g.jid()),
            ("120363000000000001", "120363000000000001@g.us".into())
        );
        assert!(GroupId::parse_jid("15550100-1700000000@g.us").is_ok());
        for bad in [
            "@g.us",
            "abc@g.us",
            "-1@g.us",
            "1@s.whatsapp.net",
            "1:2@g.us",
            "120363000000000001",
            &format!("{}@g.us", "1".repeat(MAX_GROUP_ID_BYTES + 1)),
        ] {
            assert_eq!(
                GroupId::parse_jid(bad),
                Err(GroupError::BadGroupJid),
                "{bad}"
            );
        }
    }

    #[test]
    fn phash_is_whatsmeows_v2_over_sorted_jids() {
        let a = ["15550100:0@s.whatsapp.net", "acme-home:1@interop"];
        let b = [
            "acme-home:1@interop",
            "15550100:0@s.whatsapp.net",
            "acme-home:1@interop",
        ];
        assert_eq!(phash(&a), phash(&b), "order and repeats do not matter");
        // SHA-256("15550100:0@s.whatsapp.netacme-home:1@interop"), first 6 bytes, computed
        // independently with Python's hashlib and base64 (b64encode(...).rstrip(b"=")).
        assert_eq!(phash(&a), "2:0Rfitxiv");
        assert_eq!(phash(&a).len(), 2 + 8);
        assert_ne!(phash(&a[..1]), phash(&a));
    }

    #[test]
    fn an_outgoing_group_message_has_participants_then_the_skmsg() {
        let out = OutgoingGroupMessage {
            id: "3EB0AABBCCDDEEFF001122".into(),
            group: GroupId::new("120363000000000001").unwrap(),
            kind: "text".into(),
            t_secs: 1_700_000_000,
            mediatype: None,
            skmsg: vec![1, 2, 3],
            distributions: vec![(
                Jid::parse("15550100:0@s.whatsapp.net").unwrap(),
                Ciphertext {
                    kind: EncType::PkMsg,
                    body: vec![4, 5],
                },
            )],
            phash: "2:AAAAAAAA".into(),
        };
        let xml = String::from_utf8(out.to_stanza().to_xml()).unwrap();
        assert_eq!(
            xml,
            r#"<message id="3EB0AABBCCDDEEFF001122" to="120363000000000001@g.us" type="text" t="1700000000" phash="2:AAAAAAAA"><participants><to jid="15550100:0@s.whatsapp.net"><enc v="2" type="pkmsg">BAU=</enc></to></participants><enc v="2" type="skmsg">AQID</enc></message>"#
        );
    }

    #[test]
    fn a_delivered_group_message_names_group_and_participant() {
        let s = parse(br#"<message id="3EB0AA" from="120363000000000001@g.us" participant="acme-home:1@interop" to="15550100@s.whatsapp.net" type="text" t="1"><enc v="2" type="pkmsg">BAU=</enc><enc v="2" type="skmsg">AQID</enc></message>"#).unwrap();
        let m = parse_inbound(&s).unwrap().unwrap();
        assert_eq!(m.group.as_str(), "120363000000000001");
        assert_eq!(m.participant.to_string(), "acme-home:1@interop");
        assert_eq!(m.pairwise.map(|c| c.kind), Some(EncType::PkMsg));
        assert_eq!(m.skmsg, [1, 2, 3]);
        let one = parse(br#"<message id="3EB0AA" from="15550100:0@s.whatsapp.net" type="text"><enc v="2" type="msg">AQID</enc></message>"#).unwrap();
        assert_eq!(
            parse_inbound(&one).unwrap(),
            None,
            "1:1 is not a group message"
        );
    }

    #[test]
    fn a_group_message_without_a_device_participant_or_skmsg_is_malformed() {
        for xml in [
            r#"<message id="A" from="1@g.us" type="text"><enc v="2" type="skmsg">AQID</enc></message>"#,
            r#"<message id="A" from="1@g.us" participant="15550100@s.whatsapp.net" type="text"><enc v="2" type="skmsg">AQID</enc></message>"#,
            r#"<message id="A" from="1@g.us" participant="15550100:0@s.whatsapp.net" type="text"><enc v="2" type="msg">AQID</enc></message>"#,
            r#"<message id="A" from="1@g.us" participant="15550100:0@s.whatsapp.net" type="text"><enc v="2" type="skmsg">AQID</enc><enc v="2" type="msg">AQID</enc></message>"#,
            r#"<message id="A" from="1@g.us" participant="15550100:0@s.whatsapp.net" type="text"><enc v="1" type="skmsg">AQID</enc></message>"#,
        ] {
            let s = parse(xml.as_bytes()).unwrap();
            assert!(
                matches!(parse_inbound(&s), Err(GroupError::Malformed { .. })),
                "{xml}"
            );
        }
    }
}
