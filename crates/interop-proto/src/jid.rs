//! Addresses on the wire (JIDs) of profile `interop-xml/1`: parsing, formatting and the
//! conversion to the Signal engine's [`Address`]. A sans-I/O core: no I/O, no clock, no
//! randomness.
//!
//! Two servers exist:
//! - `interop`: accounts of third-party providers, `{integrator}-{user}:{device}@interop`
//!   (the account name is everything before the colon);
//! - `s.whatsapp.net`: WhatsApp users, `{phone digits}:{device}@s.whatsapp.net`, where
//!   device 0 is the phone.
//!
//! A JID without `:{device}` names the user (every device of it). Device numbers are
//! decimal without leading zeros, at most [`MAX_DEVICE_ID`].

use std::fmt;

use crate::signal::Address;

/// Server part of our providers' accounts.
pub const INTEROP_SERVER: &str = "interop";
/// Server part of WhatsApp users.
pub const WHATSAPP_SERVER: &str = "s.whatsapp.net";
/// Longest account name, in bytes.
pub const MAX_ACCOUNT_BYTES: usize = 64;
/// Fewest and most digits of a phone number (E.164 allows at most 15).
pub const MIN_PHONE_DIGITS: usize = 5;
/// Most digits of a phone number (E.164).
pub const MAX_PHONE_DIGITS: usize = 15;
/// Largest device number.
pub const MAX_DEVICE_ID: u32 = 99;

/// Which side a JID lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    /// A provider account (`@interop`).
    Interop,
    /// A WhatsApp user (`@s.whatsapp.net`).
    WhatsApp,
}

impl Server {
    /// The server part as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Server::Interop => INTEROP_SERVER,
            Server::WhatsApp => WHATSAPP_SERVER,
        }
    }
}

/// A user or device address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    /// The account name or the phone digits.
    pub user: String,
    /// The device, or `None` for the user as a whole.
    pub device: Option<u32>,
    /// Where the user lives.
    pub server: Server,
}

/// Why a text is not a JID, phone number or account name. Always caused by whoever sent
/// the text (a peer on the wire, a caller of the API); the reader answers `bad_jid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JidError {
    /// Peer or caller: there is no `@server` part, or the server is not one we know.
    UnknownServer,
    /// Peer or caller: the account name is empty, too long, or has characters outside
    /// `[a-z0-9._-]`.
    BadAccount,
    /// Peer or caller: the phone number is not 5..=15 digits (after an optional `+`).
    BadPhone,
    /// Peer or caller: the device number is not decimal, has leading zeros, or is over
    /// [`MAX_DEVICE_ID`].
    BadDevice,
}

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JidError::UnknownServer => "address has no known server part",
            JidError::BadAccount => "account name must be 1..=64 of [a-z0-9._-]",
            JidError::BadPhone => "phone number must be 5..=15 digits",
            JidError::BadDevice => "device must be a number 0..=99 without leading zeros",
        })
    }
}

impl std::error::Error for JidError {}

/// Checks an account name: 1..=[`MAX_ACCOUNT_BYTES`] of `[a-z0-9._-]`, starting with a
/// letter or digit.
pub fn check_account(name: &str) -> Result<(), JidError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ACCOUNT_BYTES
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(JidError::BadAccount)
    }
}

/// The integrator id of an account: the part before the first `-`, or the whole name.
pub fn integrator_of(account: &str) -> &str {
    account.split('-').next().unwrap_or(account)
}

/// Parses an E.164 number (`+4915112345678`) or bare digits into the digits.
pub fn parse_phone(text: &str) -> Result<String, JidError> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    let ok = (MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(digits.to_owned())
    } else {
        Err(JidError::BadPhone)
    }
}

fn parse_device(text: &str) -> Result<u32, JidError> {
    let ok = !text.is_empty()
        && text.len() <= 2
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !ok {
        return Err(JidError::BadDevice);
    }
    let n: u32 = text.parse().map_err(|_| JidError::BadDevice)?;
    if n > MAX_DEVICE_ID {
        return Err(JidError::BadDevice);
    }
    Ok(n)
}

impl Jid {
    /// A provider account's user JID (`name@interop`).
    pub fn interop(account: impl Into<String>, device: Option<u32>) -> Jid {
        Jid {
            user: account.into(),
            device,
            server: Server::Interop,
        }
    }

    /// A WhatsApp user's JID from its digits.
    pub fn whatsapp(digits: impl Into<String>, device: Option<u32>) -> Jid {
        Jid {
            user: digits.into(),
            device,
            server: Server::WhatsApp,
        }
    }

    /// Parses `user[:device]@server`.
    pub fn parse(text: &str) -> Result<Jid, JidError> {
        let (left, server) = text.rsplit_once('@').ok_or(JidError::UnknownServer)?;
        let server = match server {
            INTEROP_SERVER => Server::Interop,
            WHATSAPP_SERVER => Server::WhatsApp,
            _ => return Err(JidError::UnknownServer),
        };
        let (user, device) = match left.split_once(':') {
            Some((user, device)) => (user, Some(parse_device(device)?)),
            None => (left, None),
        };
        match server {
            Server::Interop => check_account(user)?,
            Server::WhatsApp => {
                if parse_phone(user)? != user {
                    return Err(JidError::BadPhone);
                }
            }
        }
        Ok(Jid {
            user: user.to_owned(),
            device,
            server,
        })
    }

    /// The same JID without its device: the user as a whole.
    pub fn to_user(&self) -> Jid {
        Jid {
            user: self.user.clone(),
            device: None,
            server: self.server,
        }
    }

    /// The same user's device `device`.
    pub fn with_device(&self, device: u32) -> Jid {
        Jid {
            user: self.user.clone(),
            device: Some(device),
            server: self.server,
        }
    }

    /// The Signal engine's address of this device (device 0 when none is named).
    pub fn address(&self) -> Address {
        Address::new(self.user.clone(), self.device.unwrap_or(0))
    }

    /// The key under which stores file this device: `user.device` (as [`Address::key`]).
    pub fn device_key(&self) -> String {
        self.address().key()
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device {
            Some(d) => write!(f, "{}:{}@{}", self.user, d, self.server.as_str()),
            None => write!(f, "{}@{}", self.user, self.server.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interop_device_jid_round_trips() {
        let j = Jid::parse("acme-home:1@interop").unwrap();
        assert_eq!(j, Jid::interop("acme-home", Some(1)));
        assert_eq!(j.to_string(), "acme-home:1@interop");
        assert_eq!(integrator_of(&j.user), "acme");
    }

    #[test]
    fn whatsapp_user_jid_has_no_device() {
        let j = Jid::parse("15550100@s.whatsapp.net").unwrap();
        assert_eq!(j.device, None);
        assert_eq!(j.with_device(0).to_string(), "15550100:0@s.whatsapp.net");
    }

    #[test]
    fn bad_jids_are_refused_with_their_reason() {
        assert_eq!(Jid::parse("x@example.com"), Err(JidError::UnknownServer));
        assert_eq!(Jid::parse("Acme@interop"), Err(JidError::BadAccount));
        assert_eq!(Jid::parse("12ab@s.whatsapp.net"), Err(JidError::BadPhone));
        assert_eq!(Jid::parse("acme:01@interop"), Err(JidError::BadDevice));
        assert_eq!(Jid::parse("acme:100@interop"), Err(JidError::BadDevice));
        assert_eq!(
            Jid::parse("+15550100@s.whatsapp.net"),
            Err(JidError::BadPhone)
        );
    }

    #[test]
    fn phone_accepts_e164_and_digits() {
        assert_eq!(parse_phone("+15550100").unwrap(), "15550100");
        assert_eq!(parse_phone("15550100").unwrap(), "15550100");
        assert!(parse_phone("+1").is_err());
        assert!(parse_phone("+0155501").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_display_round_trips(s in "\\PC{0,40}") {
            if let Ok(j) = Jid::parse(&s) {
                prop_assert_eq!(Jid::parse(&j.to_string()), Ok(j));
            }
        }

        #[test]
        fn built_jids_round_trip(user in "[a-z][a-z0-9-]{0,20}", dev in proptest::option::of(0u32..=99)) {
            let j = Jid::interop(user, dev);
            prop_assert_eq!(Jid::parse(&j.to_string()), Ok(j));
        }
    }
}
