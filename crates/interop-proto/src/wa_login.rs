//! The login of wire profile `wa`, both sides, sans-I/O: the `ClientPayload` the daemon puts
//! in its Noise `ClientFinish`, and what the gatekeeper reads from it. No I/O, no clock, no
//! randomness.
//!
//! ```text
//!   client                                                  server
//!   Noise XX, static key = our Signal identity key  ──▶     (handshake proves the key)
//!   ClientPayload{ product INTEROP, device,
//!     userAgent, connectType, connectReason, passive,
//!     pushName?, devicePairingData{eRegid, eKeytype 5, eIdent},
//!     interopData{accountId, token = provider JWT} }  ──▶   parse_client_payload
//!                                                           account by accountId,
//!                                                           JWT against the provider's JWKS
//!                                              ◀──          <success jid t enlisted/>  or
//!                                                           <failure reason text/> and close
//! ```
//!
//! What `interop-xml/1` proves with an XEdDSA signature over a challenge (`login.rs`), `wa`
//! proves with the Noise handshake itself: the client's static key is its Signal identity key
//! (the X25519 form of the same key pair), and the `se` step of XX only completes for the
//! holder of its private key. So the gatekeeper learns the identity it binds the device to at
//! enlistment from the handshake, and `devicePairingData.eIdent` must repeat it. The same key
//! pair already does Diffie-Hellman in X3DH; using it once more in Noise adds no new kind of
//! use. **Our choice**, not public: how Meta's endpoint binds an interop identity.
//!
//! `interopData.accountId` is a number, and our accounts have names (`acme-home`), so the
//! number is derived from the name ([`account_id`]); the JWT's `sub` names the account and
//! must match it. **Our choice** too: Meta assigns its own account ids.

use core::fmt;

use prost::Message as _;
use sha2::Digest as _;

use crate::jid::{self, Jid};
use crate::login::{Hello, LoginFailure, Verified};
use crate::noise::wire::{
    AppVersion, ClientPayload, ConnectReason, ConnectType, DevicePairingData, InteropData,
    Platform, Product, UserAgent,
};
use crate::signal::{self, RawKey};

/// The profile's name, as `[gatekeeper] profile` writes it.
pub const WA_PROFILE: &str = "wa";
/// Longest provider token (a JWT) in `interopData.token`, in bytes.
pub const MAX_WA_TOKEN_BYTES: usize = 4096;
/// Longest push name, in bytes.
pub const MAX_PUSH_NAME_BYTES: usize = 64;
/// Domain separation of [`account_id`].
const ACCOUNT_ID_DOMAIN: &[u8] = b"interop account id\0";
/// `devicePairingData.eKeytype` of a Curve25519 key (libsignal's `DJB_TYPE`).
const KEY_TYPE_DJB: u8 = 5;

/// The number `interopData.accountId` carries for account `name`: the first 8 bytes, big
/// endian, of SHA-256(`"interop account id\0"` || name), top bit clear (so it survives a
/// signed 64-bit reader).
pub fn account_id(name: &str) -> u64 {
    let digest = sha2::Sha256::new()
        .chain_update(ACCOUNT_ID_DOMAIN)
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    for (o, b) in first.iter_mut().zip(digest.iter()) {
        *o = *b;
    }
    u64::from_be_bytes(first) & (u64::MAX >> 1)
}

/// What the client says about itself besides the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaHello {
    pub hello: Hello,
    pub registration_id: u32,
    /// Our public identity key (also the Noise static key).
    pub identity: RawKey,
    /// Shown to contacts that have not saved us; at most [`MAX_PUSH_NAME_BYTES`].
    pub push_name: Option<String>,
    /// The software's version, `(major, minor, patch)`.
    pub version: (u32, u32, u32),
    /// Why this connection opens (first start, or a reconnect after an error).
    pub reason: ConnectReason,
}

/// The encoded `ClientPayload` for `hello` and the provider `token`.
pub fn client_payload(hello: &WaHello, token: &str) -> Vec<u8> {
    let (primary, secondary, tertiary) = hello.version;
    ClientPayload {
        username: None,
        passive: Some(false),
        user_agent: Some(UserAgent {
            // Baileys and whatsmeow send WEB for a companion that is not a phone.
            platform: Some(Platform::Web as i32),
            app_version: Some(AppVersion {
                primary: Some(primary),
                secondary: Some(secondary),
                tertiary: Some(tertiary),
            }),
            os_version: Some("Linux".to_owned()),
            manufacturer: Some("interopd".to_owned()),
            device: Some("interopd".to_owned()),
        }),
        push_name: hello
            .push_name
            .clone()
            .filter(|n| !n.is_empty() && n.len() <= MAX_PUSH_NAME_BYTES),
        connect_type: Some(ConnectType::WifiUnknown as i32),
        connect_reason: Some(hello.reason as i32),
        device: Some(hello.hello.device),
        device_pairing_data: Some(DevicePairingData {
            e_regid: Some(hello.registration_id.to_be_bytes().to_vec()),
            e_keytype: Some(vec![KEY_TYPE_DJB]),
            e_ident: Some(hello.identity.to_vec()),
        }),
        product: Some(Product::Interop as i32),
        interop_data: Some(InteropData {
            account_id: Some(account_id(&hello.hello.account)),
            token: Some(token.as_bytes().to_vec()),
            enable_read_receipts: Some(true),
        }),
    }
    .encode_to_vec()
}

/// What a `ClientPayload` claims, before the account and the token are checked.
#[derive(Clone, PartialEq, Eq)]
pub struct WaClaim {
    pub account_id: u64,
    pub device: u32,
    /// The provider JWT. Never logged.
    pub token: String,
    pub registration_id: u32,
    /// The client's identity: its Noise static key, proven by the handshake.
    pub identity: RawKey,
    pub push_name: Option<String>,
}

impl fmt::Debug for WaClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaClaim")
            .field("account_id", &self.account_id)
            .field("device", &self.device)
            .field("token_bytes", &self.token.len())
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

impl WaClaim {
    /// The login, once the caller found `account` (with its `integrator`) for
    /// [`WaClaim::account_id`] and verified the token for it.
    pub fn verified(&self, account: &str, integrator: &str) -> Verified {
        Verified {
            hello: Hello {
                account: account.to_owned(),
                device: self.device,
                integrator: integrator.to_owned(),
            },
            registration_id: self.registration_id,
            identity: self.identity,
        }
    }
}

/// Reads the decrypted `ClientPayload` of a handshake whose client static key was
/// `client_static`. Every refusal is the peer's fault ([`LoginFailure::BadRequest`]).
pub fn parse_client_payload(
    payload: &[u8],
    client_static: &RawKey,
) -> Result<WaClaim, LoginFailure> {
    let bad = |detail| LoginFailure::BadRequest { detail };
    let p = ClientPayload::decode(payload).map_err(|_| bad("ClientPayload does not decode"))?;
    if p.product != Some(Product::Interop as i32) {
        return Err(bad("ClientPayload.product is not INTEROP"));
    }
    let interop = p
        .interop_data
        .as_ref()
        .ok_or(bad("ClientPayload has no interopData"))?;
    let account_id = interop
        .account_id
        .ok_or(bad("interopData has no accountId"))?;
    let token = interop
        .token
        .as_deref()
        .filter(|t| !t.is_empty() && t.len() <= MAX_WA_TOKEN_BYTES)
        .and_then(|t| core::str::from_utf8(t).ok())
        .ok_or(bad("interopData.token is missing, too long or not UTF-8"))?;
    let device = p
        .device
        .filter(|d| (1..=jid::MAX_DEVICE_ID).contains(d))
        .ok_or(bad("ClientPayload.device is missing or out of range"))?;
    let pairing = p
        .device_pairing_data
        .as_ref()
        .ok_or(bad("ClientPayload has no devicePairingData"))?;
    let registration_id = pairing
        .e_regid
        .as_deref()
        .and_then(|r| <[u8; 4]>::try_from(r).ok())
        .map(u32::from_be_bytes)
        .filter(|r| *r != 0 && *r <= signal::REGISTRATION_ID_MASK)
        .ok_or(bad(
            "devicePairingData.eRegid is not a 4-byte registration id",
        ))?;
    if pairing.e_keytype.as_deref() != Some(&[KEY_TYPE_DJB][..]) {
        return Err(bad("devicePairingData.eKeytype is not 5"));
    }
    if pairing.e_ident.as_deref() != Some(&client_static[..]) {
        return Err(bad(
            "devicePairingData.eIdent is not the Noise static key of this handshake",
        ));
    }
    let push_name = p
        .push_name
        .filter(|n| !n.is_empty() && n.len() <= MAX_PUSH_NAME_BYTES);
    Ok(WaClaim {
        account_id,
        device,
        token: token.to_owned(),
        registration_id,
        identity: *client_static,
        push_name,
    })
}

/// The device JID a claim logs in as, once its account is known.
pub fn device_jid(account: &str, claim: &WaClaim) -> Jid {
    Jid::interop(account.to_owned(), Some(claim.device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> WaHello {
        WaHello {
            hello: Hello {
                account: "acme-home".into(),
                device: 1,
                integrator: "acme".into(),
            },
            registration_id: 4242,
            identity: [7u8; 32],
            push_name: Some("Home".into()),
            version: (0, 1, 0),
            reason: ConnectReason::UserActivated,
        }
    }

    #[test]
    fn a_payload_reads_back_as_what_the_client_claimed() {
        let h = hello();
        let bytes = client_payload(&h, "header.claims.sig");
        let claim = parse_client_payload(&bytes, &h.identity).unwrap();
        assert_eq!(claim.account_id, account_id("acme-home"));
        assert_eq!(claim.device, 1);
        assert_eq!(claim.token, "header.claims.sig");
        assert_eq!(claim.registration_id, 4242);
        assert_eq!(claim.push_name.as_deref(), Some("Home"));
        let v = claim.verified("acme-home", "acme");
        assert_eq!(v.hello, h.hello);
        assert_eq!(v.identity, h.identity);
        assert!(!format!("{claim:?}").contains("header.claims"));
    }

    #[test]
    fn account_ids_differ_by_name_and_fit_a_signed_reader() {
        let a = account_id("acme-home");
        assert_ne!(a, account_id("acme-home2"));
        assert_eq!(a, account_id("acme-home"));
        assert!(a <= i64::MAX as u64);
    }

    #[test]
    fn an_identity_other_than_the_noise_static_is_refused() {
        let h = hello();
        let bytes = client_payload(&h, "t");
        let e = parse_client_payload(&bytes, &[8u8; 32]).unwrap_err();
        assert_eq!(e.reason(), "bad_request");
        assert!(e.to_string().contains("eIdent"), "{e}");
    }

    #[test]
    fn each_missing_or_wrong_field_is_named() {
        let h = hello();
        let good = ClientPayload::decode(&client_payload(&h, "t")[..]).unwrap();
        type Change = Box<dyn Fn(&mut ClientPayload)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|p| p.product = Some(Product::Whatsapp as i32)),
                "INTEROP",
            ),
            (Box::new(|p| p.interop_data = None), "interopData"),
            (
                Box::new(|p| p.interop_data.as_mut().unwrap().token = Some(vec![b'x'; 4097])),
                "token",
            ),
            (
                Box::new(|p| p.interop_data.as_mut().unwrap().token = Some(vec![0xff])),
                "token",
            ),
            (Box::new(|p| p.device = Some(0)), "device"),
            (Box::new(|p| p.device = Some(100)), "device"),
            (
                Box::new(|p| p.device_pairing_data.as_mut().unwrap().e_regid = Some(vec![1, 2])),
                "eRegid",
            ),
            (
                Box::new(|p| p.device_pairing_data.as_mut().unwrap().e_keytype = None),
                "eKeytype",
            ),
        ];
        for (change, word) in cases {
            let mut p = good.clone();
            change(&mut p);
            let e = parse_client_payload(&p.encode_to_vec(), &h.identity).unwrap_err();
            assert!(e.to_string().contains(word), "{word}: {e}");
        }
        let e = parse_client_payload(b"\xff\xff\xff", &h.identity).unwrap_err();
        assert!(e.to_string().contains("decode"), "{e}");
    }

    #[test]
    fn the_noise_static_key_is_the_identity_key() {
        let id = crate::signal::LocalIdentity::generate(&mut rand::rng());
        assert_eq!(id.noise_static().public(), id.public());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_client_payload(&b, &[1u8; 32]);
        }
    }
}
