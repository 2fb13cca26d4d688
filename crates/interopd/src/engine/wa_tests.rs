//! The engine's `wa` login, without a hub: the handshake is the shell's, so the engine starts
//! silent and waits for the gatekeeper's `<success>` or `<failure>`.

use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::*;
use crate::login::{LoginFailure, failure_stanza, success_stanza};
use crate::metrics::Metrics;

const T0: u64 = 1_800_000_000_000;

fn engine() -> Engine<StdRng> {
    let mut rng = StdRng::seed_from_u64(21);
    let client = Client::new(Store::in_memory().unwrap(), "acme-home", 1, &mut rng).unwrap();
    let bus = EventBus::new(false, Rc::new(Metrics::default()));
    Engine::new(client, bus, Login::Wa, T0, StdRng::seed_from_u64(22))
}

#[test]
fn a_wa_engine_sends_nothing_and_is_up_on_success() {
    let mut e = engine();
    assert_eq!(e.poll_transmit(), None, "the handshake carried the login");
    assert_eq!(
        e.poll_timeout(),
        Some(T0 + LOGIN_WAIT_MS),
        "the login deadline still holds"
    );
    let jid = e.client().jid();
    e.handle_frame(&success_stanza(&jid, 5, false).to_xml(), T0 + 1);
    assert_eq!(
        e.poll_event(),
        Some(LinkEvent::Up {
            jid,
            enlisted: false
        })
    );
}

#[test]
fn a_wa_failure_ends_the_engine_with_its_reason() {
    let mut e = engine();
    let refused = failure_stanza(&LoginFailure::TokenRefused {
        reason: "token_expired",
        text: "the JWT expired".into(),
    });
    e.handle_frame(&refused.to_xml(), T0 + 1);
    match e.poll_event() {
        Some(LinkEvent::Down(why)) => {
            assert!(why.starts_with("login refused"), "{why}");
            assert!(why.contains("token_expired"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn the_login_never_shows_its_token() {
    assert_eq!(format!("{:?}", Login::Token("secret")), "Login::Token(..)");
}
