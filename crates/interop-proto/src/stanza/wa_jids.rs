//! How the `wa` profile writes a WhatsApp user's device 0 (the phone): as the bare user JID,
//! the way WhatsApp's own clients and servers do. whatsmeow's `writeJID` and Baileys'
//! `encodeWAMessage` write `{user}@s.whatsapp.net` for device 0 and an `AD_JID` only for a
//! device above 0; a reader tells "device 0" from "the user as a whole" by where the JID
//! stands. Our stanza model always says which it means (`{user}:0@s.whatsapp.net` is the
//! device, `{user}@s.whatsapp.net` the user), so the `wa` stream rewrites at its edge:
//! [`to_wa`] before encoding, [`from_wa`] after decoding, both by one table of the places in
//! the vocabulary where a device stands ([`DEVICE_PLACES`]; docs/protocol-wa.md, "Stanza
//! mapping"). Anywhere else a JID is left as it is. A sans-I/O core.

use super::{Content, Stanza, Writer};
use crate::jid::WHATSAPP_SERVER;

/// One place in the vocabulary where an attribute names a device, not a user.
#[derive(Debug, Clone, Copy)]
pub struct DevicePlace {
    /// Tags from the stanza's root down to the element that has the attribute.
    pub path: &'static [&'static str],
    /// The attribute.
    pub attr: &'static str,
    /// Only in stanzas this side writes; `None`: whoever writes it.
    pub writer: Option<Writer>,
    /// Only when the root element has this attribute with this value.
    pub when: Option<(&'static str, &'static str)>,
}

const fn place(
    path: &'static [&'static str],
    attr: &'static str,
    writer: Option<Writer>,
    when: Option<(&'static str, &'static str)>,
) -> DevicePlace {
    DevicePlace {
        path,
        attr,
        writer,
        when,
    }
}

/// Every place where the vocabulary names a device (docs/protocol.md §§8–14).
pub const DEVICE_PLACES: &[DevicePlace] = &[
    // The sending device of a delivered message, receipt or chat state.
    place(&["message"], "from", Some(Writer::Server), None),
    place(&["receipt"], "from", Some(Writer::Server), None),
    place(&["chatstate"], "from", Some(Writer::Server), None),
    // The sending device of a group message, and the device a group receipt concerns.
    place(&["message"], "participant", Some(Writer::Server), None),
    place(&["receipt"], "participant", None, None),
    // Each recipient device of a message.
    place(&["message", "participants", "to"], "jid", None, None),
    // The devices whose prekey bundles are asked for, and the bundles given.
    place(&["iq", "key", "user"], "jid", Some(Writer::Client), None),
    place(&["iq", "list", "user"], "jid", Some(Writer::Server), None),
    // A client's ack of a message names the device that sent it.
    place(
        &["ack"],
        "to",
        Some(Writer::Client),
        Some(("class", "message")),
    ),
    // A retry receipt goes to the one device whose message failed.
    place(
        &["receipt"],
        "to",
        Some(Writer::Client),
        Some(("type", "retry")),
    ),
];

/// `s` as written on the `wa` wire by `writer`: device 0 of a WhatsApp user as the bare user.
pub fn to_wa(s: &mut Stanza, writer: Writer) {
    rewrite(s, writer, strip_device_zero);
}

/// `s` as read from the `wa` wire, written by `writer`: a bare WhatsApp user where a device
/// stands is device 0.
pub fn from_wa(s: &mut Stanza, writer: Writer) {
    rewrite(s, writer, add_device_zero);
}

fn rewrite(s: &mut Stanza, writer: Writer, f: fn(&str) -> Option<String>) {
    let places: Vec<&DevicePlace> = DEVICE_PLACES
        .iter()
        .filter(|p| p.writer.is_none_or(|w| w == writer))
        .filter(|p| p.when.is_none_or(|(k, v)| s.attr_value(k) == Some(v)))
        .filter(|p| p.path.first() == Some(&s.tag.as_str()))
        .collect();
    if !places.is_empty() {
        walk(s, 1, &places, f);
    }
}

fn walk(s: &mut Stanza, depth: usize, places: &[&DevicePlace], f: fn(&str) -> Option<String>) {
    for p in places.iter().filter(|p| p.path.len() == depth) {
        if let Some((_, value)) = s.attrs.iter_mut().find(|(k, _)| k == p.attr)
            && let Some(new) = f(value)
        {
            *value = new;
        }
    }
    if let Content::Children(children) = &mut s.content {
        for child in children {
            let deeper: Vec<&DevicePlace> = places
                .iter()
                .copied()
                .filter(|p| p.path.len() > depth && p.path.get(depth) == Some(&child.tag.as_str()))
                .collect();
            if !deeper.is_empty() {
                walk(child, depth + 1, &deeper, f);
            }
        }
    }
}

/// `{user}:0@s.whatsapp.net` → `{user}@s.whatsapp.net`; anything else unchanged (`None`).
fn strip_device_zero(value: &str) -> Option<String> {
    let user = value.strip_suffix(WHATSAPP_SERVER)?.strip_suffix('@')?;
    let bare = user.strip_suffix(":0")?;
    // The same user test as add_device_zero, so that the two are inverses (proptest found
    // `@:0@s.whatsapp.net`, which was stripped but never read back).
    (!bare.is_empty() && !bare.contains(':') && !bare.contains('@'))
        .then(|| format!("{bare}@{WHATSAPP_SERVER}"))
}

/// `{user}@s.whatsapp.net` → `{user}:0@s.whatsapp.net`; anything else unchanged (`None`).
fn add_device_zero(value: &str) -> Option<String> {
    let user = value.strip_suffix(WHATSAPP_SERVER)?.strip_suffix('@')?;
    (!user.is_empty() && !user.contains(':') && !user.contains('@'))
        .then(|| format!("{user}:0@{WHATSAPP_SERVER}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::parse;
    use proptest::prelude::*;

    fn st(xml: &str) -> Stanza {
        parse(xml.as_bytes()).unwrap()
    }

    /// The worked example of docs/protocol.md §20, one stanza per line, with who writes it.
    const EXAMPLE: &[(Writer, &str)] = &[
        (
            Writer::Client,
            r#"<iq id="q3" type="get" xmlns="encrypt"><key><user jid="15550100:0@s.whatsapp.net"/><user jid="15550100:2@s.whatsapp.net"/></key></iq>"#,
        ),
        (
            Writer::Server,
            r#"<iq id="q3" type="result"><list><user jid="15550100:0@s.whatsapp.net"><registration>AAAp2A==</registration></user></list></iq>"#,
        ),
        (
            Writer::Client,
            r#"<message id="3EB0AE" to="15550100@s.whatsapp.net" type="text" t="1700000000"><participants><to jid="15550100:0@s.whatsapp.net"><enc v="2" type="pkmsg">AAEC</enc></to></participants></message>"#,
        ),
        (
            Writer::Server,
            r#"<ack class="message" id="3EB0AE" to="15550100@s.whatsapp.net" t="1700000000"/>"#,
        ),
        (
            Writer::Server,
            r#"<receipt id="3EB0AE" from="15550100:0@s.whatsapp.net" to="acme-home@interop" t="1700000000" type="read"/>"#,
        ),
        (
            Writer::Server,
            r#"<message id="3EB080" from="15550100:0@s.whatsapp.net" to="acme-home@interop" type="text" t="1700000000"><enc v="2" type="msg">AAEC</enc></message>"#,
        ),
        (
            Writer::Client,
            r#"<ack class="message" id="3EB080" to="15550100:0@s.whatsapp.net"/>"#,
        ),
        (
            Writer::Client,
            r#"<receipt id="3EB080" to="15550100@s.whatsapp.net"/>"#,
        ),
        (
            Writer::Client,
            r#"<receipt id="3EB080" to="15550100:0@s.whatsapp.net" type="retry"><retry count="1" id="3EB080" t="1" v="1"/></receipt>"#,
        ),
        (
            Writer::Server,
            r#"<chatstate from="15550100:0@s.whatsapp.net" to="acme-home@interop"><composing/></chatstate>"#,
        ),
        (
            Writer::Client,
            r#"<iq id="q2" type="get" xmlns="devices"><user jid="15550100@s.whatsapp.net"/></iq>"#,
        ),
        (
            Writer::Server,
            r#"<notification id="3" type="identity" from="15550100@s.whatsapp.net" t="1700000100"/>"#,
        ),
        (
            Writer::Server,
            r#"<message id="3EB081" from="120363000000000001@g.us" participant="15550100:0@s.whatsapp.net" to="acme-home@interop" type="text" t="1700000000"><enc v="2" type="skmsg">AAEC</enc></message>"#,
        ),
        (
            Writer::Client,
            r#"<receipt id="3EB081" to="120363000000000001@g.us" participant="15550100:0@s.whatsapp.net"/>"#,
        ),
    ];

    #[test]
    fn the_example_keeps_its_meaning_and_writes_no_device_zero() {
        for (writer, xml) in EXAMPLE {
            let model = st(xml);
            let mut wire = model.clone();
            to_wa(&mut wire, *writer);
            assert!(
                !wire.to_xml().windows(2).any(|w| w == b":0"),
                "device 0 left on the wire: {}",
                String::from_utf8_lossy(&wire.to_xml())
            );
            from_wa(&mut wire, *writer);
            assert_eq!(wire, model, "{xml}");
        }
    }

    #[test]
    fn device_zero_is_the_bare_user_where_a_device_stands_only() {
        let mut m = st(EXAMPLE[2].1);
        to_wa(&mut m, Writer::Client);
        assert_eq!(
            m.to_xml(),
            br#"<message id="3EB0AE" to="15550100@s.whatsapp.net" type="text" t="1700000000"><participants><to jid="15550100@s.whatsapp.net"><enc v="2" type="pkmsg">AAEC</enc></to></participants></message>"#
        );
        // The same attribute written by the other side is not a device place: a server's ack
        // names the user, a client's names the sending device.
        let mut ack = st(r#"<ack class="message" id="1" to="15550100@s.whatsapp.net"/>"#);
        from_wa(&mut ack, Writer::Server);
        assert_eq!(ack.attr_value("to"), Some("15550100@s.whatsapp.net"));
        from_wa(&mut ack, Writer::Client);
        assert_eq!(ack.attr_value("to"), Some("15550100:0@s.whatsapp.net"));
        // A delivery receipt goes to the user; only a retry receipt names a device.
        let mut r = st(r#"<receipt id="1" to="15550100@s.whatsapp.net"/>"#);
        from_wa(&mut r, Writer::Client);
        assert_eq!(r.attr_value("to"), Some("15550100@s.whatsapp.net"));
    }

    #[test]
    fn other_devices_and_other_servers_are_left_alone() {
        let xml = r#"<message id="1" from="15550100:2@s.whatsapp.net" to="acme-home:1@interop"><enc v="2" type="msg">AAEC</enc></message>"#;
        let mut m = st(xml);
        to_wa(&mut m, Writer::Server);
        from_wa(&mut m, Writer::Server);
        assert_eq!(m, st(xml));
        let mut i = st(r#"<message id="1" from="acme-home@interop"/>"#);
        from_wa(&mut i, Writer::Server);
        assert_eq!(i.attr_value("from"), Some("acme-home@interop"));
    }

    proptest! {
        /// Whatever the value, writing then reading a device place gives it back, unless it
        /// is exactly a bare WhatsApp user: that one means device 0 there.
        #[test]
        fn a_device_place_round_trips(
            head in "[0-9a-z:@.]{0,16}",
            whatsapp in any::<bool>(),
        ) {
            let value = if whatsapp { format!("{head}@{WHATSAPP_SERVER}") } else { head };
            let model = Stanza::new("message").attr("from", value.clone());
            let mut wire = model.clone();
            to_wa(&mut wire, Writer::Server);
            from_wa(&mut wire, Writer::Server);
            if let Some(device_zero) = add_device_zero(&value) {
                prop_assert_eq!(wire.attr_value("from"), Some(device_zero.as_str()));
            } else {
                prop_assert_eq!(wire, model);
            }
        }
    }
}
