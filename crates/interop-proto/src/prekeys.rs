//! The prekey vocabulary of `<iq xmlns="encrypt">`: a bundle as a `<user>` of a key fetch
//! result, and the `<key>`/`<skey>` children of uploads and retry receipts, built and read
//! here only (docs/protocol.md, "Prekeys"). Pure: stanzas in, keys out.

use crate::jid::Jid;
use crate::signal::{self, RawKey, WireBundle, WirePreKey, WireSignedPreKey};
use crate::stanza::Stanza;

/// A `<key>` or `<skey>`: id (3 bytes), value (32) and, for an skey, the signature (64).
pub fn key_stanza(tag: &str, id: u32, public: &RawKey, signature: Option<&[u8; 64]>) -> Stanza {
    let [_, a, b, c] = id.to_be_bytes();
    let mut s = Stanza::new(tag)
        .child(Stanza::new("id").bytes(vec![a, b, c]))
        .child(Stanza::new("value").bytes(public.to_vec()));
    if let Some(sig) = signature {
        s = s.child(Stanza::new("signature").bytes(sig.to_vec()));
    }
    s
}

/// `<user jid>` with a bundle, as in a key fetch result.
pub fn bundle_stanza(device: &Jid, b: &WireBundle) -> Stanza {
    let mut u = Stanza::new("user")
        .attr("jid", device.to_string())
        .child(Stanza::new("registration").bytes(b.registration_id.to_be_bytes().to_vec()))
        .child(Stanza::new("type").bytes(vec![signal::KEY_TYPE_DJB]))
        .child(Stanza::new("identity").bytes(b.identity.to_vec()))
        .child(key_stanza(
            "skey",
            b.signed_prekey.id,
            &b.signed_prekey.public,
            Some(&b.signed_prekey.signature),
        ));
    if let Some(k) = &b.prekey {
        u = u.child(key_stanza("key", k.id, &k.public, None));
    }
    u
}

pub fn id3(s: &Stanza) -> Option<u32> {
    let b = s.child_named("id")?.payload()?;
    let [x, y, z]: [u8; 3] = b.try_into().ok()?;
    Some(u32::from_be_bytes([0, x, y, z]))
}

pub fn raw32(s: &Stanza, tag: &str) -> Option<RawKey> {
    s.child_named(tag)?.payload()?.try_into().ok()
}

/// Reads `<key>` or `<skey>` children: id (3 bytes), value (32), signature (64, skey only).
pub fn parse_prekey(s: &Stanza) -> Option<WirePreKey> {
    Some(WirePreKey {
        id: id3(s)?,
        public: raw32(s, "value")?,
    })
}

/// Reads an `<skey>`.
pub fn parse_signed_prekey(s: &Stanza) -> Option<WireSignedPreKey> {
    Some(WireSignedPreKey {
        id: id3(s)?,
        public: raw32(s, "value")?,
        signature: s.child_named("signature")?.payload()?.try_into().ok()?,
    })
}

/// Reads a `<user>` of a key fetch result into a bundle.
pub fn parse_bundle(u: &Stanza) -> Option<WireBundle> {
    let reg: [u8; 4] = u.child_named("registration")?.payload()?.try_into().ok()?;
    if u.child_named("type")?.payload()? != [signal::KEY_TYPE_DJB] {
        return None;
    }
    Some(WireBundle {
        registration_id: u32::from_be_bytes(reg),
        identity: raw32(u, "identity")?,
        signed_prekey: parse_signed_prekey(u.child_named("skey")?)?,
        prekey: match u.child_named("key") {
            Some(k) => Some(parse_prekey(k)?),
            None => None,
        },
    })
}
