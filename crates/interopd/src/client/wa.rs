//! The client's half of the `wa` profile's login. The Noise handshake itself is the shell's
//! (`link::Transport::open_wa`): it proves our identity key and carries the provider token in
//! the `ClientPayload`, so on the stanza stream the client only waits for `<success>` or
//! `<failure>`. What the handshake needs from our store, [`Client::wa_hello`] gives.

use interop_proto::noise::{PrivateKey, wire::ConnectReason};
use interop_proto::wa_login::{MAX_PUSH_NAME_BYTES, WaHello};

use super::{Client, ClientError};
use crate::login::ClientLogin;
use crate::signal::{self, SignalError};

/// Our version as the `ClientPayload`'s `userAgent.appVersion` carries it.
fn version() -> (u32, u32, u32) {
    let n = |s: &str| s.parse().unwrap_or(0);
    (
        n(env!("CARGO_PKG_VERSION_MAJOR")),
        n(env!("CARGO_PKG_VERSION_MINOR")),
        n(env!("CARGO_PKG_VERSION_PATCH")),
    )
}

impl Client {
    /// What the `wa` handshake says about us, and the Noise static key it proves: our Signal
    /// identity key pair. `push_name` longer than [`MAX_PUSH_NAME_BYTES`] is left out.
    /// Never log the key.
    pub fn wa_hello(
        &self,
        push_name: Option<&str>,
        reason: ConnectReason,
    ) -> Result<(WaHello, PrivateKey), ClientError> {
        let txn = self.store.begin()?;
        let id = signal::local_identity(&txn)?.ok_or(SignalError::Internal {
            detail: "no identity".into(),
        })?;
        let hello = WaHello {
            hello: self.hello.clone(),
            registration_id: id.registration_id(),
            identity: id.public(),
            push_name: push_name
                .filter(|n| !n.is_empty() && n.len() <= MAX_PUSH_NAME_BYTES)
                .map(str::to_owned),
            version: version(),
            reason,
        };
        Ok((hello, id.noise_static()))
    }

    /// Starts the `wa` login on a connection whose Noise handshake completed: nothing to
    /// send, the next stanza is `<success>` or `<failure>`. Resets as [`Client::start`] does.
    pub fn start_wa(&mut self, now_ms: u64) {
        self.begin_login(ClientLogin::after_handshake(self.hello.clone()));
        self.last_tx_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::client::Event;
    use crate::login::{LoginError, LoginFailure, failure_stanza, success_stanza};
    use crate::store::Store;

    fn client() -> (Client, StdRng) {
        let mut rng = StdRng::seed_from_u64(7);
        let c = Client::new(Store::in_memory().unwrap(), "acme-home", 1, &mut rng).unwrap();
        (c, rng)
    }

    #[test]
    fn a_wa_start_sends_nothing_and_is_ready_on_success() {
        let (mut c, mut rng) = client();
        c.start_wa(1_000);
        assert_eq!(c.poll_transmit(), None);
        assert!(!c.is_ready());
        let ok = success_stanza(&c.jid(), 5, false).to_xml();
        c.handle_frame(&ok, 1_001, &mut rng);
        assert!(c.is_ready());
        assert!(
            matches!(c.poll_event(), Some(Event::LoggedIn(l)) if l.jid == c.jid() && !l.enlisted)
        );
        assert_eq!(c.poll_transmit(), None, "not enlisted: no key upload");
    }

    #[test]
    fn a_wa_failure_is_login_failed_with_its_reason() {
        let (mut c, mut rng) = client();
        c.start_wa(1_000);
        let refused = failure_stanza(&LoginFailure::TokenRefused {
            reason: "token_expired",
            text: "the JWT expired".into(),
        })
        .to_xml();
        c.handle_frame(&refused, 1_001, &mut rng);
        assert!(!c.is_ready());
        match c.poll_event() {
            Some(Event::LoginFailed(LoginError::Refused { reason, .. })) => {
                assert_eq!(reason, "token_expired");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_wa_hello_carries_our_identity_and_its_noise_key() {
        let (c, _) = client();
        let (hello, key) = c
            .wa_hello(Some("Home"), ConnectReason::UserActivated)
            .unwrap();
        assert_eq!(hello.identity, c.identity().unwrap());
        assert_eq!(key.public(), hello.identity);
        assert_eq!(hello.hello.account, "acme-home");
        assert_eq!(hello.push_name.as_deref(), Some("Home"));
        let long = "n".repeat(MAX_PUSH_NAME_BYTES + 1);
        let (hello, _) = c.wa_hello(Some(&long), ConnectReason::Push).unwrap();
        assert_eq!(hello.push_name, None);
    }
}
