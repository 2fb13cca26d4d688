//! interopd: the household end of DMA messaging interoperability.
//!
//! One crate, two thin binaries (`interopd`, `interop-hub`). The library holds sans-I/O cores
//! and, in later modules, the shell that drives them. Crate map, one noun per file:
//!
//! | module             | owns                                                         | I/O? |
//! |--------------------|--------------------------------------------------------------|------|
//! | [`store`]          | the redb file: tables, schema version, row layouts           | disk |
//! | [`signal`]         | X3DH + Double Ratchet via the Signal crate, over a store txn | no   |
//! | [`content`]        | the `Message` protobuf subset, padding, message ids          | no   |
//! | [`media_crypto`]   | streaming media encryption and verification                  | no   |
//! | [`frame`]          | 3-byte length framing and the reassembly buffer              | no   |
//! | [`stanza`]         | the stanza model, its XML encoding and parser, bounds        | no   |
//!
//! The rest of the code never names the Signal crate; [`signal`] is the boundary.
#![forbid(unsafe_code)]

pub mod content;
pub mod frame;
pub mod media_crypto;
pub mod signal;
pub mod stanza;
pub mod store;
