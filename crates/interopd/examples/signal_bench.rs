//! Signal one-way throughput with the identity record as schema 2 stores it (the public key
//! kept) against schema 1's (the public key derived from the private one at every
//! operation), measured in the same run on the same machine: 200-byte messages encrypted by
//! one device and decrypted by another, each operation in its own transaction of an
//! in-memory store (so no fsync noise), after a session is set up.
//!
//! Run: `cargo run --release -p interopd --example signal_bench [MESSAGES]` (default 3000).
//! It prints messages per second for each record version and their ratio.

use std::time::Instant;

use interop_proto::signal_store::{KeyTable, SignalStore};
use interopd::signal::{self, Address};
use interopd::store::Store;

const NOW: u64 = 1_700_000_000_000;

/// Rewrites a store's identity row as schema 1 wrote it: version 1, no public key.
fn downgrade_identity(store: &Store) -> Result<(), Box<dyn std::error::Error>> {
    let txn = store.begin()?;
    let row = txn
        .get(KeyTable::LocalIdentity, "identity")?
        .ok_or("no identity")?;
    let mut v1 = row.get(..37).ok_or("short identity row")?.to_vec();
    v1[0] = 1;
    txn.put(KeyTable::LocalIdentity, "identity", &v1)?;
    txn.commit()?;
    Ok(())
}

/// Messages per second, one way, from `alice` to `bob`.
fn one_way(messages: usize, v1: bool) -> Result<f64, Box<dyn std::error::Error>> {
    let rng = &mut rand::rng();
    let (alice, bob) = (Store::in_memory()?, Store::in_memory()?);
    for s in [&alice, &bob] {
        let txn = s.begin()?;
        signal::provision(&txn, rng, NOW, 2)?;
        txn.commit()?;
        if v1 {
            downgrade_identity(s)?;
        }
    }
    let (a, b) = (Address::new("alice", 1), Address::new("bob", 1));
    let txn = bob.begin()?;
    let id = signal::prekey_ids(&txn, 1)?.first().copied();
    let bundle = signal::own_bundle(&txn, id)?;
    drop(txn);
    let txn = alice.begin()?;
    signal::process_bundle(&txn, &b, &bundle, rng, NOW)?;
    txn.commit()?;
    let text = [0x61u8; 200];
    let started = Instant::now();
    for _ in 0..messages {
        let txn = alice.begin()?;
        let ct = signal::encrypt(&txn, &b, &text, NOW)?;
        txn.commit()?;
        let txn = bob.begin()?;
        let plain = signal::decrypt(&txn, &a, &ct, rng, NOW)?;
        txn.commit()?;
        if plain.plaintext.len() != text.len() {
            return Err("decrypted the wrong length".into());
        }
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let messages: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 3000,
    };
    // Alternate, so that drift in the machine's load hits both alike; keep the best of three.
    let (mut v1, mut v2) = (0f64, 0f64);
    for _ in 0..3 {
        v1 = v1.max(one_way(messages, true)?);
        v2 = v2.max(one_way(messages, false)?);
    }
    println!("identity row v1 (public key derived): {v1:.0} msg/s");
    println!("identity row v2 (public key stored):  {v2:.0} msg/s");
    println!("ratio v2 / v1: {:.2}", v2 / v1);
    Ok(())
}
