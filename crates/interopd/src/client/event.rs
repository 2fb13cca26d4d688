//! What the [`Client`](super::Client) reports ([`Event`]) and how its calls fail
//! ([`ClientError`]).

use super::*;

/// What happened, for the test or the daemon to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Login succeeded.
    LoggedIn(LoggedIn),
    /// Login failed; the server closes.
    LoginFailed(LoginError),
    /// Our prekeys are published.
    KeysUploaded,
    /// A message arrived, was decrypted and committed (then acked).
    Message {
        id: String,
        from: Jid,
        t_secs: u64,
        cursor: u64,
        message: Box<Message>,
    },
    /// A media message was decrypted and committed as pending (then acked); its blob must
    /// be downloaded before it enters the inbox ([`Client::set_hold_media`]).
    MediaPending { id: String, from: Jid },
    /// A message could not be decrypted (acked anyway).
    DecryptFailed {
        id: String,
        from: Jid,
        reason: String,
    },
    /// A receipt arrived: `kind` is `None` for delivery, `read` or `retry`.
    Receipt {
        id: String,
        from: Jid,
        kind: Option<String>,
    },
    /// The server accepted (`error == None`) or refused a message or receipt we sent.
    Acked {
        class: String,
        id: String,
        error: Option<String>,
    },
    /// A contact device's identity key changed from `previous` to `current`, seen in a
    /// bundle or a message. `held`: its contact was verified, so `current` waits as pending
    /// (sends and receives for the device are held) until the household trusts it; otherwise
    /// `current` is in use. Reported once per change, and journalled in the transaction
    /// that stored it.
    IdentityChanged(IdentityChange),
    /// Our store failed while handling a stanza: the connection is closed (what the stanza
    /// asked was not committed, so it was not acked and comes again on the next connection).
    StoreFailed { detail: String },
    /// The gatekeeper announced that `user`'s identity changed: its sessions were dropped,
    /// and the new key is checked (and reported as [`Event::IdentityChanged`]) when met.
    IdentityAnnounced { user: Jid },
    /// A contact's device list changed.
    DevicesChanged { user: Jid },
    /// The server says our one-time prekeys run low; a top-up was sent.
    PrekeysLow { count: u64 },
    /// Answer to [`Client::request_count`].
    PrekeyCount { count: u64 },
    /// A send could not start: the recipient has no usable devices (`code` is the outbox
    /// row's error code: `no_devices`, `unknown_group`, `too_many_devices`).
    SendFailed {
        id: String,
        reason: String,
        code: &'static str,
    },
    /// The gatekeeper answered [`Client::group_request`] `ticket` (0: the client's own).
    GroupAnswer { ticket: u64, answer: GroupAnswer },
    /// A `w:gp2` notification changed group `group`: `change` is `create`, `add` or
    /// `remove`, of `members`.
    GroupChanged {
        group: crate::group::GroupId,
        change: String,
        members: Vec<Jid>,
    },
    /// A send is held: a device of `user`, a verified contact, offered a new identity. It
    /// goes out once the household trusts the contact again.
    SendHeld { id: String, user: Jid },
    /// A retry receipt was answered: the outbox row `id` went again to the device `to` on a
    /// rebuilt session, as resend number `count`.
    Resent { id: String, to: Jid, count: u8 },
    /// A typing indicator.
    ChatState { from: Jid, state: String },
    /// The server closed the stream with `<stream:error>`.
    StreamError { code: String },
    /// We refused a frame from the server (not a stanza we accept: a DOCTYPE, bad XML, …),
    /// for `reason`; the connection is over and the caller closes it.
    FrameRejected { reason: String },
    /// A keepalive ping went unanswered past [`KEEPALIVE_DEADLINE_MS`]; the connection is
    /// dead and the caller closes it.
    KeepaliveTimeout,
    /// The transport ended (reported by `link::Connection`, the tests' shell).
    Disconnected,
}

/// Why a client call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Environment: our store failed.
    Store(StoreError),
    /// Environment or peer: the Signal engine refused.
    Signal(SignalError),
    /// Caller: content too large.
    Content(content::ContentError),
    /// Caller: too many sends in flight.
    Busy,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Store(e) => write!(f, "{e}"),
            ClientError::Signal(e) => write!(f, "{e}"),
            ClientError::Content(e) => write!(f, "{e}"),
            ClientError::Busy => write!(f, "more than {MAX_PENDING_SENDS} sends in flight"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Store(e)
    }
}

impl From<SignalError> for ClientError {
    fn from(e: SignalError) -> Self {
        ClientError::Signal(e)
    }
}
