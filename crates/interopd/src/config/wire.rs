//! Step 2 for the wire profile: `[gatekeeper] profile`, `noise_root`, `noise_root_serial`,
//! and the `[account] token` bound that depends on the profile.
//!
//! A config without `profile` speaks `interop-xml/1`: files printed before the key existed
//! have none and must keep working. `interop-hub provision` always writes it.

use interop_proto::WireProfile;
use interop_proto::noise::RootPin;

use super::{ConfigError, S};

/// WhatsApp's own Noise root public key (serial 0), as a vendor with a Meta agreement pins it
/// in `[gatekeeper] noise_root`. Documented in docs/config.md; a test checks it parses.
pub const WHATSAPP_NOISE_ROOT: &str =
    "142375574d0a587166aae71ebe516437c4a28b73e3695c6ce1f7f9545da8ee6b";

/// The profile of a config without `[gatekeeper] profile`.
pub const PROFILE_WHEN_ABSENT: WireProfile = WireProfile::InteropXml1;

/// Longest `[account] token` on `profile`, in bytes.
pub fn max_token_bytes(profile: WireProfile) -> usize {
    match profile {
        WireProfile::InteropXml1 => crate::login::MAX_TOKEN_BYTES,
        WireProfile::Wa => interop_proto::wa_login::MAX_WA_TOKEN_BYTES,
    }
}

/// What [`parse`] reads from `[gatekeeper]`.
pub(super) struct RawWire<'a> {
    pub profile: &'a Option<S<String>>,
    pub noise_root: &'a Option<S<String>>,
    pub noise_root_serial: &'a Option<S<u32>>,
    /// Where an error about a missing key points (the `address` line).
    pub section: std::ops::Range<usize>,
}

/// The profile and, on `wa`, the pinned Noise root; then checks `token` against the
/// profile's bound.
pub(super) fn parse(
    raw: &RawWire<'_>,
    token: &S<String>,
    err: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<(WireProfile, Option<RootPin>), ConfigError> {
    let profile = match raw.profile {
        None => PROFILE_WHEN_ABSENT,
        Some(p) => WireProfile::parse(p.get_ref()).ok_or_else(|| {
            err(
                p.span(),
                format!(
                    "gatekeeper.profile {:?} must be \"{}\" or \"{}\"",
                    p.get_ref(),
                    WireProfile::Wa,
                    WireProfile::InteropXml1
                ),
            )
        })?,
    };
    let noise_root = match (profile, raw.noise_root) {
        (WireProfile::Wa, None) => {
            return Err(err(
                raw.section.clone(),
                "gatekeeper.noise_root (the gatekeeper's Noise root public key, 64 hex digits) is required when gatekeeper.profile is \"wa\"".into(),
            ));
        }
        (WireProfile::Wa, Some(r)) => {
            let key = parse_hex32(r.get_ref()).ok_or_else(|| {
                err(
                    r.span(),
                    "gatekeeper.noise_root must be 64 hex digits".into(),
                )
            })?;
            let serial = raw.noise_root_serial.as_ref().map_or(0, |s| *s.get_ref());
            Some(RootPin { key, serial })
        }
        (WireProfile::InteropXml1, _) => {
            let stray = raw
                .noise_root
                .as_ref()
                .map(|r| ("noise_root", r.span()))
                .or(raw
                    .noise_root_serial
                    .as_ref()
                    .map(|s| ("noise_root_serial", s.span())));
            if let Some((key, span)) = stray {
                return Err(err(
                    span,
                    format!(
                        "gatekeeper.{key} has no effect on profile \"{}\" (it pins the Noise root of profile \"wa\"); remove it or set gatekeeper.profile = \"wa\"",
                        WireProfile::InteropXml1
                    ),
                ));
            }
            None
        }
    };
    let max = max_token_bytes(profile);
    let len = token.get_ref().len();
    if len == 0 || len > max {
        return Err(err(
            token.span(),
            format!("account.token must be 1 to {max} bytes on profile \"{profile}\""),
        ));
    }
    Ok((profile, noise_root))
}

/// The `[gatekeeper]` lines for the profile, as `Config`'s Display writes them.
pub(super) fn render(
    f: &mut std::fmt::Formatter<'_>,
    profile: WireProfile,
    noise_root: Option<&RootPin>,
) -> std::fmt::Result {
    writeln!(f, "profile = \"{profile}\"")?;
    if let Some(r) = noise_root {
        writeln!(f, "noise_root = \"{}\"", super::hex(&r.key))?;
        if r.serial != 0 {
            writeln!(f, "noise_root_serial = {}", r.serial)?;
        }
    }
    Ok(())
}

/// Reads a Noise root public key written as 64 hex digits (`[gatekeeper] noise_root`).
pub fn parse_noise_root(hex: &str) -> Option<[u8; 32]> {
    parse_hex32(hex)
}

/// 64 hex digits (surrounding whitespace ignored) as 32 bytes.
pub(super) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}
