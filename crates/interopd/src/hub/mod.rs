//! `interop-hub`, the reference gatekeeper: a real server for profile `interop-xml/1`, built
//! from the same codec ([`crate::frame`], [`crate::stanza`]), login ([`crate::login`]) and
//! Signal engine ([`crate::signal`]) as the daemon. One noun per file:
//!
//! | module      | owns                                                                   | I/O? |
//! |-------------|------------------------------------------------------------------------|------|
//! | [`media`]   | the media store: blobs simulated users send, and their messages      | disk |
//! | [`proxy`]   | the media proxy: registered provider media hosts, bounded fetches    | net  |
//! | [`server`]  | the shell: TLS listener, connection tasks, control API, accounts   | net  |
//! | [`state`]   | connections, routing, offline queues, prekey directory, notifications | no   |
//! | [`store`]   | the hub's own redb file and its tables                                 | disk |
//! | [`users`]   | simulated WhatsApp users, their behaviours and Signal state            | disk |
//!
//! The sans-I/O [`state::Hub`] is driven by a shell (TLS listener, control API) or, in tests,
//! by an in-process network with a virtual clock.

pub mod media;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub mod users;

#[cfg(test)]
mod tests;
