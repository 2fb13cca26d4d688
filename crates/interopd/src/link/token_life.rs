//! How long the `wa` profile's provider token has left, said in the log at start, so a
//! household learns of an expiring token weeks before the gatekeeper refuses it. The token is
//! read without any check of its signature (`jwt::peek_claims`): only its `exp` is used, and
//! only for this message. The token itself is never logged.

use interop_proto::jwt;

/// Fewer days than this left on the token is a warning, in days.
pub const TOKEN_WARN_DAYS: u64 = 30;

/// What [`token_lifetime`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLife {
    /// Not a JWT we can read: the gatekeeper will say why it refuses it.
    Unreadable,
    /// Expired `days` days ago (0: today).
    Expired { days: u64 },
    /// `days` whole days left.
    Left { days: u64 },
}

/// Reads the token's `exp` against `now_unix_s`.
pub fn token_lifetime(token: &str, now_unix_s: u64) -> TokenLife {
    match jwt::peek_claims(token) {
        Err(_) => TokenLife::Unreadable,
        Ok(c) if c.exp <= now_unix_s => TokenLife::Expired {
            days: (now_unix_s - c.exp) / 86_400,
        },
        Ok(c) => TokenLife::Left {
            days: (c.exp - now_unix_s) / 86_400,
        },
    }
}

/// Logs what [`token_lifetime`] found, at the level it deserves.
pub fn log_token_lifetime(token: &str, now_unix_s: u64) {
    match token_lifetime(token, now_unix_s) {
        TokenLife::Unreadable => log::warn!(
            "link: [account] token is not a JWT; on profile wa the gatekeeper expects a provider JWT and will refuse the login"
        ),
        TokenLife::Expired { days } => log::error!(
            "link: the provider token in [account] token expired {days} day(s) ago; the gatekeeper will refuse the login (token_expired). Get a new token from your provider (for interop-hub: interop-hub provision --profile wa) and restart"
        ),
        TokenLife::Left { days } if days < TOKEN_WARN_DAYS => log::warn!(
            "link: the provider token in [account] token expires in {days} day(s); get a new one from your provider before then"
        ),
        TokenLife::Left { days } => {
            log::info!("link: the provider token is valid for {days} more days")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn token(exp: u64) -> String {
        let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b(r#"{"alg":"ES256","typ":"JWT"}"#),
            b(&format!(
                r#"{{"iss":"acme","sub":"acme-home","aud":"interop-hub","exp":{exp}}}"#
            )),
            b("sig")
        )
    }

    #[test]
    fn the_days_left_are_read_from_exp() {
        let now = 1_800_000_000;
        assert_eq!(
            token_lifetime(&token(now + 40 * 86_400 + 5), now),
            TokenLife::Left { days: 40 }
        );
        assert_eq!(
            token_lifetime(&token(now + 3600), now),
            TokenLife::Left { days: 0 }
        );
        assert_eq!(
            token_lifetime(&token(now - 2 * 86_400), now),
            TokenLife::Expired { days: 2 }
        );
        assert_eq!(
            token_lifetime(&token(now), now),
            TokenLife::Expired { days: 0 }
        );
        assert_eq!(token_lifetime("secret-token", now), TokenLife::Unreadable);
    }
}
