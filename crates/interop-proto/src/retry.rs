//! Retry receipts (docs/protocol.md section 12): the `<receipt type="retry">` a device sends
//! when it cannot decrypt a message, and its reader. Both ends use these two functions: the
//! hub's simulated users and interopd. This file owns the stanza layout and the limits of a
//! retry receipt; what a device does about one (rebuild the session, resend under the same id)
//! belongs to its caller. No I/O, no clock, no randomness: the caller passes the time and the
//! keys.
//!
//! ```text
//! <receipt id="3EB0…" to=SENDER-DEVICE type="retry">
//!   <retry count="N" id="3EB0…" t="SECS" v="1"/>
//!   <registration>4 bytes</registration>
//!   <keys>                                      from count RETRY_KEYS_FROM_COUNT on
//!     <type>0x05</type><identity>32</identity>
//!     <key><id>3</id><value>32</value></key>     a fresh one-time prekey (optional)
//!     <skey><id>3</id><value>32</value><signature>64</signature></skey>
//!   </keys>
//! </receipt>
//! ```

use std::fmt;

use crate::content::MessageId;
use crate::jid::Jid;
use crate::prekeys::{bundle_stanza, parse_prekey, parse_signed_prekey};
use crate::signal::{self, RawKey, WireBundle};
use crate::stanza::Stanza;

/// Most retry receipts a device sends for one message; a sender ignores a higher count.
pub const MAX_RETRY_RECEIPTS: u8 = 5;
/// The first retry count that carries `<keys>` (count 1 asks for a plain resend).
pub const RETRY_KEYS_FROM_COUNT: u8 = 2;
/// The only `<retry v>` this profile defines.
pub const RETRY_VERSION: &str = "1";
/// Length of `<registration>`, in bytes (a big-endian registration id).
pub const REGISTRATION_BYTES: usize = 4;

/// One retry receipt, as sent or as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryReceipt {
    /// The message that could not be decrypted (the receipt's and `<retry>`'s `id`).
    pub id: MessageId,
    /// 1..=[`MAX_RETRY_RECEIPTS`]: how many times the receiver has asked for this message.
    pub count: u8,
    /// `<retry t>`: the failed message's `t` (Unix seconds).
    pub t_secs: u64,
    /// The receiving device's registration id (`<registration>`).
    pub registration_id: u32,
    /// The receiving device's keys (`<keys>`), to start a new session from. On reading, the
    /// bundle's `registration_id` is the receipt's; on writing it is ignored.
    pub keys: Option<WireBundle>,
}

/// Why a stanza is not a usable retry receipt. Every variant is the peer's fault; the reader
/// acks the receipt and does nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryError {
    /// Peer: the stanza is not a `<receipt type="retry">`.
    NotRetry,
    /// Peer: a required attribute or child is absent; `what` names it.
    Missing { what: &'static str },
    /// Peer: a field has the wrong form or length; `what` names it.
    Malformed { what: &'static str },
    /// Peer: `<retry v>` is not [`RETRY_VERSION`]; `len` is the length of what was sent.
    UnsupportedVersion { len: usize },
    /// Peer: `count` is outside 1..=[`MAX_RETRY_RECEIPTS`].
    CountOutOfRange { count: u64 },
    /// Peer: `<retry id>` names another message than the receipt's `id`.
    IdMismatch,
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::NotRetry => f.write_str("not a retry receipt"),
            RetryError::Missing { what } => write!(f, "retry receipt lacks {what}"),
            RetryError::Malformed { what } => write!(f, "retry receipt has a malformed {what}"),
            RetryError::UnsupportedVersion { len } => {
                write!(
                    f,
                    "retry receipt version ({len} bytes) is not {RETRY_VERSION}"
                )
            }
            RetryError::CountOutOfRange { count } => {
                write!(f, "retry count {count} is outside 1..={MAX_RETRY_RECEIPTS}")
            }
            RetryError::IdMismatch => f.write_str("retry id differs from the receipt id"),
        }
    }
}

impl std::error::Error for RetryError {}

/// The `<keys>` a retry receipt number `count` carries, from the device's store in `txn`:
/// none before [`RETRY_KEYS_FROM_COUNT`]; then our identity, the current signed prekey and
/// one fresh one-time prekey, generated in `txn` (the caller commits before sending) unless
/// `with_prekey` is false (a device that already holds many unused prekeys).
pub fn keys_for_receipt<S: signal::SignalStore, R: rand::Rng + rand::CryptoRng>(
    txn: &S,
    count: u8,
    with_prekey: bool,
    rng: &mut R,
) -> Result<Option<signal::WireBundle>, signal::SignalError<S::Error>> {
    if count < RETRY_KEYS_FROM_COUNT {
        return Ok(None);
    }
    let identity = signal::local_identity(txn)?.ok_or(signal::SignalError::Internal {
        detail: "no identity".into(),
    })?;
    let prekey = if with_prekey {
        signal::generate_prekeys(txn, rng, 1)?.into_iter().next()
    } else {
        None
    };
    let (signed_prekey, _) =
        signal::current_signed_prekey(txn)?.ok_or(signal::SignalError::Internal {
            detail: "no signed prekey".into(),
        })?;
    Ok(Some(signal::WireBundle {
        registration_id: identity.registration_id(),
        identity: identity.public(),
        signed_prekey,
        prekey,
    }))
}

/// Builds the retry receipt `r` for the device `to` (the device whose message failed).
/// The caller decides `count` and whether `keys` go along (from [`RETRY_KEYS_FROM_COUNT`]).
pub fn retry_receipt_stanza(to: &Jid, r: &RetryReceipt) -> Stanza {
    let id = r.id.as_str();
    let mut s = Stanza::new("receipt")
        .attr("id", id)
        .attr("to", to.to_string())
        .attr("type", "retry")
        .child(
            Stanza::new("retry")
                .attr("count", r.count.to_string())
                .attr("id", id)
                .attr("t", r.t_secs.to_string())
                .attr("v", RETRY_VERSION),
        )
        .child(Stanza::new("registration").bytes(r.registration_id.to_be_bytes().to_vec()));
    if let Some(keys) = &r.keys {
        // The same children a key fetch answer carries, in the order section 12 shows.
        let user = bundle_stanza(to, keys);
        let keys = Stanza::new("keys").extend_children(
            ["type", "identity", "key", "skey"]
                .into_iter()
                .filter_map(|tag| user.child_named(tag).cloned()),
        );
        s = s.child(keys);
    }
    s
}

/// Reads a retry receipt (as sent, or as the server delivers it with `from` and `t`).
pub fn parse_retry_receipt(s: &Stanza) -> Result<RetryReceipt, RetryError> {
    if s.tag != "receipt" || s.attr_value("type") != Some("retry") {
        return Err(RetryError::NotRetry);
    }
    let id_text = s
        .attr_value("id")
        .ok_or(RetryError::Missing { what: "id" })?;
    let id = MessageId::parse(id_text).map_err(|_| RetryError::Malformed { what: "id" })?;
    let retry = s
        .child_named("retry")
        .ok_or(RetryError::Missing { what: "<retry>" })?;
    let version = retry
        .attr_value("v")
        .ok_or(RetryError::Missing { what: "v" })?;
    if version != RETRY_VERSION {
        return Err(RetryError::UnsupportedVersion { len: version.len() });
    }
    if retry.attr_value("id") != Some(id_text) {
        return Err(RetryError::IdMismatch);
    }
    let count: u64 = number(retry, "count")?;
    let count = u8::try_from(count)
        .ok()
        .filter(|c| (1..=MAX_RETRY_RECEIPTS).contains(c))
        .ok_or(RetryError::CountOutOfRange { count })?;
    let t_secs = number(retry, "t")?;
    let reg: [u8; REGISTRATION_BYTES] = s
        .child_named("registration")
        .ok_or(RetryError::Missing {
            what: "<registration>",
        })?
        .payload()
        .and_then(|p| p.try_into().ok())
        .ok_or(RetryError::Malformed {
            what: "<registration>",
        })?;
    let registration_id = u32::from_be_bytes(reg);
    let keys = match s.child_named("keys") {
        Some(k) => Some(parse_keys(k, registration_id)?),
        None => None,
    };
    Ok(RetryReceipt {
        id,
        count,
        t_secs,
        registration_id,
        keys,
    })
}

/// A decimal attribute of `<retry>`: digits only, no sign, fits in a u64.
fn number(retry: &Stanza, what: &'static str) -> Result<u64, RetryError> {
    let text = retry.attr_value(what).ok_or(RetryError::Missing { what })?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RetryError::Malformed { what });
    }
    text.parse().map_err(|_| RetryError::Malformed { what })
}

fn parse_keys(k: &Stanza, registration_id: u32) -> Result<WireBundle, RetryError> {
    let key_type = k
        .child_named("type")
        .ok_or(RetryError::Missing { what: "<type>" })?;
    if key_type.payload() != Some(&[signal::KEY_TYPE_DJB][..]) {
        return Err(RetryError::Malformed { what: "<type>" });
    }
    let identity: RawKey = k
        .child_named("identity")
        .ok_or(RetryError::Missing { what: "<identity>" })?
        .payload()
        .and_then(|p| p.try_into().ok())
        .ok_or(RetryError::Malformed { what: "<identity>" })?;
    let signed_prekey = parse_signed_prekey(
        k.child_named("skey")
            .ok_or(RetryError::Missing { what: "<skey>" })?,
    )
    .ok_or(RetryError::Malformed { what: "<skey>" })?;
    let prekey = match k.child_named("key") {
        Some(p) => Some(parse_prekey(p).ok_or(RetryError::Malformed { what: "<key>" })?),
        None => None,
    };
    Ok(WireBundle {
        registration_id,
        identity,
        signed_prekey,
        prekey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{WirePreKey, WireSignedPreKey};
    use crate::stanza;
    use proptest::prelude::*;

    const VECTOR: &str = include_str!("../../../tests/data/retry/receipt_count2.xml");

    fn id() -> MessageId {
        MessageId::parse("3EB0AEFD7C7033F19C38DE").unwrap()
    }

    fn keys() -> WireBundle {
        WireBundle {
            registration_id: 0x1673,
            identity: [0x11; 32],
            signed_prekey: WireSignedPreKey {
                id: 1,
                public: [0x22; 32],
                signature: [0x33; 64],
            },
            prekey: Some(WirePreKey {
                id: 0x01_0203,
                public: [0x44; 32],
            }),
        }
    }

    fn device() -> Jid {
        Jid::interop("acme-home", Some(1))
    }

    fn reparse(s: &Stanza) -> Result<RetryReceipt, RetryError> {
        parse_retry_receipt(&stanza::parse(&s.to_xml()).unwrap())
    }

    #[test]
    fn first_retry_has_no_keys_and_reads_back() {
        let r = RetryReceipt {
            id: id(),
            count: 1,
            t_secs: 1_700_000_000,
            registration_id: 5747,
            keys: None,
        };
        let s = retry_receipt_stanza(&device(), &r);
        assert_eq!(
            String::from_utf8(s.to_xml()).unwrap(),
            "<receipt id=\"3EB0AEFD7C7033F19C38DE\" to=\"acme-home:1@interop\" type=\"retry\">\
             <retry count=\"1\" id=\"3EB0AEFD7C7033F19C38DE\" t=\"1700000000\" v=\"1\"/>\
             <registration>AAAWcw==</registration></receipt>"
        );
        assert_eq!(reparse(&s), Ok(r));
    }

    #[test]
    fn second_retry_carries_keys_exactly_as_the_vector() {
        let r = RetryReceipt {
            id: id(),
            count: 2,
            t_secs: 1_700_000_000,
            registration_id: 0x1673,
            keys: Some(keys()),
        };
        let s = retry_receipt_stanza(&device(), &r);
        assert_eq!(String::from_utf8(s.to_xml()).unwrap(), VECTOR.trim_end());
        assert_eq!(reparse(&s), Ok(r));
        // The receipt as the server delivers it (with from and t) reads the same.
        let mut delivered = stanza::parse(VECTOR.trim_end().as_bytes()).unwrap();
        delivered
            .attrs
            .push(("from".into(), "15550100:0@s.whatsapp.net".into()));
        assert_eq!(parse_retry_receipt(&delivered).unwrap().count, 2);
    }

    #[test]
    fn keys_without_a_one_time_prekey_are_accepted() {
        let mut k = keys();
        k.prekey = None;
        let r = RetryReceipt {
            id: id(),
            count: 3,
            t_secs: 0,
            registration_id: k.registration_id,
            keys: Some(k),
        };
        assert_eq!(reparse(&retry_receipt_stanza(&device(), &r)), Ok(r));
    }

    #[test]
    fn keys_take_the_registration_of_the_receipt() {
        let r = RetryReceipt {
            id: id(),
            count: 2,
            t_secs: 9,
            registration_id: 77,
            keys: Some(keys()),
        };
        let got = reparse(&retry_receipt_stanza(&device(), &r)).unwrap();
        assert_eq!(got.keys.map(|k| k.registration_id), Some(77));
    }

    fn with_retry_attr(key: &str, value: &str) -> Stanza {
        let mut s = stanza::parse(VECTOR.trim_end().as_bytes()).unwrap();
        if let stanza::Content::Children(children) = &mut s.content {
            let retry = children.iter_mut().filter(|c| c.tag == "retry");
            for slot in retry
                .flat_map(|r| r.attrs.iter_mut())
                .filter(|(k, _)| k == key)
            {
                slot.1 = value.to_owned();
            }
        }
        s
    }

    #[test]
    fn counts_outside_one_to_five_are_refused() {
        for (count, want) in [
            ("0", RetryError::CountOutOfRange { count: 0 }),
            ("6", RetryError::CountOutOfRange { count: 6 }),
            ("+1", RetryError::Malformed { what: "count" }),
            ("", RetryError::Malformed { what: "count" }),
            (
                "99999999999999999999999",
                RetryError::Malformed { what: "count" },
            ),
        ] {
            assert_eq!(
                parse_retry_receipt(&with_retry_attr("count", count)),
                Err(want)
            );
        }
        assert_eq!(
            parse_retry_receipt(&with_retry_attr("count", "5")).map(|r| r.count),
            Ok(5)
        );
    }

    #[test]
    fn other_versions_ids_and_receipt_types_are_refused() {
        assert_eq!(
            parse_retry_receipt(&with_retry_attr("v", "2")),
            Err(RetryError::UnsupportedVersion { len: 1 })
        );
        assert_eq!(
            parse_retry_receipt(&with_retry_attr("id", "3EB0000000000000000000")),
            Err(RetryError::IdMismatch)
        );
        let read = Stanza::new("receipt")
            .attr("id", id().as_str())
            .attr("type", "read");
        assert_eq!(parse_retry_receipt(&read), Err(RetryError::NotRetry));
        let bad_id = Stanza::new("receipt").attr("id", "x").attr("type", "retry");
        assert_eq!(
            parse_retry_receipt(&bad_id),
            Err(RetryError::Malformed { what: "id" })
        );
    }

    #[test]
    fn malformed_key_material_is_refused() {
        let base = RetryReceipt {
            id: id(),
            count: 2,
            t_secs: 1,
            registration_id: 1,
            keys: Some(keys()),
        };
        let good = retry_receipt_stanza(&device(), &base);
        let edit = |tag: &str, f: &dyn Fn(&mut Stanza)| {
            let mut s = good.clone();
            if let stanza::Content::Children(children) = &mut s.content {
                for c in children.iter_mut() {
                    if c.tag == tag {
                        f(c);
                    }
                    if let stanza::Content::Children(inner) = &mut c.content {
                        for i in inner.iter_mut().filter(|i| i.tag == tag) {
                            f(i);
                        }
                    }
                }
            }
            parse_retry_receipt(&s)
        };
        let short = |s: &mut Stanza| s.content = stanza::Content::Bytes(vec![5; 3]);
        assert_eq!(
            edit("registration", &short),
            Err(RetryError::Malformed {
                what: "<registration>"
            })
        );
        assert_eq!(
            edit("identity", &short),
            Err(RetryError::Malformed { what: "<identity>" })
        );
        let wrong_type = |s: &mut Stanza| s.content = stanza::Content::Bytes(vec![6]);
        assert_eq!(
            edit("type", &wrong_type),
            Err(RetryError::Malformed { what: "<type>" })
        );
        let rename = |s: &mut Stanza| s.tag = "other".into();
        assert_eq!(
            edit("skey", &rename),
            Err(RetryError::Missing { what: "<skey>" })
        );
        let no_sig = |s: &mut Stanza| {
            if let stanza::Content::Children(c) = &mut s.content {
                c.retain(|x| x.tag != "signature");
            }
        };
        assert_eq!(
            edit("skey", &no_sig),
            Err(RetryError::Malformed { what: "<skey>" })
        );
    }

    fn message_id() -> impl Strategy<Value = MessageId> {
        "3EB0[0-9A-F]{18}".prop_map(|s| MessageId::parse(&s).unwrap())
    }

    fn bundle() -> impl Strategy<Value = Option<WireBundle>> {
        proptest::option::of((
            any::<[u8; 32]>(),
            1u32..=signal::MAX_PREKEY_ID,
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 64),
            proptest::option::of((1u32..=signal::MAX_PREKEY_ID, any::<[u8; 32]>())),
        ))
        .prop_map(|o| {
            o.map(|(identity, sid, spub, sig, pk)| WireBundle {
                registration_id: 0,
                identity,
                signed_prekey: WireSignedPreKey {
                    id: sid,
                    public: spub,
                    signature: sig.try_into().unwrap(),
                },
                prekey: pk.map(|(id, public)| WirePreKey { id, public }),
            })
        })
    }

    proptest! {
        #[test]
        fn every_built_receipt_reads_back_unchanged(
            id in message_id(),
            count in 1..=MAX_RETRY_RECEIPTS,
            t_secs in any::<u64>(),
            registration_id in any::<u32>(),
            keys in bundle(),
        ) {
            let keys = keys.map(|k| WireBundle { registration_id, ..k });
            let r = RetryReceipt { id, count, t_secs, registration_id, keys };
            prop_assert_eq!(reparse(&retry_receipt_stanza(&device(), &r)), Ok(r));
        }

        #[test]
        fn arbitrary_frames_never_panic_the_reader(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(s) = stanza::parse(&data) {
                let _ = parse_retry_receipt(&s);
            }
        }

        #[test]
        fn arbitrary_retry_fields_never_panic_the_reader(
            count in "\\PC{0,24}",
            t in "\\PC{0,24}",
            v in "\\PC{0,4}",
            reg in proptest::collection::vec(any::<u8>(), 0..8),
            identity in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let s = Stanza::new("receipt")
                .attr("id", "3EB0AEFD7C7033F19C38DE")
                .attr("type", "retry")
                .child(Stanza::new("retry")
                    .attr("count", count)
                    .attr("id", "3EB0AEFD7C7033F19C38DE")
                    .attr("t", t)
                    .attr("v", v))
                .child(Stanza::new("registration").bytes(reg))
                .child(Stanza::new("keys")
                    .child(Stanza::new("type").bytes(vec![5]))
                    .child(Stanza::new("identity").bytes(identity)));
            let _ = parse_retry_receipt(&s);
        }
    }
}
