//! `interop-hub`, the reference gatekeeper: a real server for profile `interop-xml/1`, built
//! from the same codec, login and Signal engine as the daemon (the `interop-proto` crate) and
//! the same shell plumbing (`interop-io`), and never from the daemon itself.
//!
//! # Layout
//!
//! Core (no I/O):
//! - [`state`]: connections, routing, offline queues, the prekey directory, notifications.
//!
//! Simulated WhatsApp users:
//! - [`users`]: their behaviours and what they received.
//! - [`device_store`]: each simulated device's Signal state in a redb file of its own.
//!
//! Storage and media:
//! - [`store`]: the hub's own redb file and its tables.
//! - [`media`]: blobs simulated users send, and their messages.
//! - [`proxy`]: registered provider media hosts, fetched with bounds.
//! - [`provider`]: the hub as a test provider: per-integrator ES256 keys and the JWKS it trusts.
//!
//! Shell:
//! - [`server`]: the TLS listener, connection tasks, control API and accounts.
//!
//! The sans-I/O [`state::Hub`] is driven by a shell (the TLS listener, the control API) or, in
//! tests, by an in-process network with a virtual clock.
#![forbid(unsafe_code)]

/// Directory of provider accounts inside the hub's state directory: one record per account
/// (the server's provisioning) and its registered media hosts (the proxy's). At the crate
/// root so that neither of the two depends on the other.
pub const ACCOUNTS_DIR: &str = "accounts";

pub mod device_store;
pub mod media;
pub mod provider;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub mod users;
