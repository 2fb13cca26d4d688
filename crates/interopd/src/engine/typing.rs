//! Typing from contacts: a `<chatstate>` becomes a `typing` event in the API's event log (SSE
//! and webhooks), never an inbox entry. Peers repeat `composing` every few seconds while
//! someone types, and each logged event is a store commit, so a contact's unchanged state
//! is logged at most once per [`TYPING_REPEAT_MS`].

use super::*;

/// Contacts whose last typing state the engine remembers; beyond it the memory starts over.
pub const MAX_TYPING_TRACKED: usize = 256;
/// Shortest time between two logged typing events of one contact with the same state, in
/// milliseconds.
pub const TYPING_REPEAT_MS: u64 = 10_000;

impl<R: Rng + CryptoRng> Engine<R> {
    /// Contact `user` sent chat state `state` (`composing` or `paused`; others are ignored).
    pub(super) fn chat_state(&mut self, user: &str, state: &str) {
        let composing = match state {
            "composing" => true,
            "paused" => false,
            _ => return,
        };
        if user.len() > crate::events::MAX_IDENTITY_USER_BYTES {
            return;
        }
        let now = self.now_ms;
        if let Some(&(last, at)) = self.typing_seen.get(user)
            && last == composing
            && now.saturating_sub(at) < TYPING_REPEAT_MS
        {
            return;
        }
        if self.typing_seen.len() >= MAX_TYPING_TRACKED && !self.typing_seen.contains_key(user) {
            self.typing_seen.clear();
        }
        self.typing_seen.insert(user.to_owned(), (composing, now));
        let logged = self.store.begin().and_then(|txn| {
            self.bus.record_typing(&txn, user, composing, now)?;
            txn.commit()
        });
        match logged {
            Ok(()) => self.bus.notify(),
            Err(e) => self.down(format!("store: {e}")),
        }
    }
}
