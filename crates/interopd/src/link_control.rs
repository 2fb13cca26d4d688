//! What the API and the daemon need from the link, as a handle with no I/O: its state
//! ([`LinkState`]), the calls that wake it ([`LinkControl`]), and a link that never connects
//! ([`OfflineLink`]) for tests and for the time before the real one is plugged in. Its own
//! file so that the API, the daemon and the link can all name it without depending on one
//! another (`tests/layout.rs` forbids import cycles).

use std::cell::Cell;

use crate::client::{GroupAnswer, GroupRequest};

/// Whether the link is logged in at the gatekeeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
    /// Another client logged in as our device and the gatekeeper closed us with
    /// `replaced`; the link waits [`crate::link::REPLACED_WAIT_MS`] before it tries again.
    Replaced,
}

/// What the API needs from the link. Every method returns at once; the link does the work
/// on its own tasks.
pub trait LinkControl {
    /// New outbox rows were committed (or a contact was trusted): flush the outbox soon.
    fn wake(&self);
    /// Whether the link is logged in now.
    fn state(&self) -> LinkState;
    /// How many times the link connected again after losing its connection.
    fn reconnects(&self) -> u64;
    /// The consumer marked inbox message `message_id` from `from_digits` read; the request is
    /// already committed in `read_marks` (see `api::inbox::pending_read_marks`). Send the read
    /// receipt now if connected; after each login the link sends all pending ones anyway.
    fn mark_read(&self, from_digits: &str, message_id: &str);
    /// Show `composing` (or `paused`) to contact `to_digits` now. Not stored: `false` when
    /// the link is not up, or [`MAX_PENDING_TYPING`] notices already wait.
    fn typing(&self, to_digits: &str, composing: bool) -> bool;
    /// Hands a group request to the gatekeeper; the receiver gets its answer, or is closed
    /// when the connection ends first. Refused when the link is not up, or
    /// [`MAX_PENDING_GROUP_REQUESTS`] wait already.
    fn group_request(
        &self,
        _req: GroupRequest,
    ) -> Result<smol::channel::Receiver<GroupAnswer>, GroupRequestError> {
        Err(GroupRequestError::LinkDown)
    }
}

/// Group requests that may wait for the link's turn or the gatekeeper's answer at once.
pub const MAX_PENDING_GROUP_REQUESTS: usize = 16;

/// Why [`LinkControl::group_request`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRequestError {
    /// Environment: the link is not logged in.
    LinkDown,
    /// Caller: [`MAX_PENDING_GROUP_REQUESTS`] are waiting.
    Busy,
}

/// Typing notices that may wait for the link's next turn; more are refused.
pub const MAX_PENDING_TYPING: usize = 16;

/// A link that is never connected. The daemon uses it until the real link is plugged in, and
/// tests use it to run the API alone.
#[derive(Debug, Default)]
pub struct OfflineLink {
    wakes: Cell<u64>,
}

impl OfflineLink {
    /// How many times [`LinkControl::wake`] was called.
    pub fn wakes(&self) -> u64 {
        self.wakes.get()
    }
}

impl LinkControl for OfflineLink {
    fn wake(&self) {
        self.wakes.set(self.wakes.get() + 1);
    }

    fn state(&self) -> LinkState {
        LinkState::Down
    }

    fn reconnects(&self) -> u64 {
        0
    }

    fn mark_read(&self, _from_digits: &str, _message_id: &str) {}

    fn typing(&self, _to_digits: &str, _composing: bool) -> bool {
        false
    }
}
