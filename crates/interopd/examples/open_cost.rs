//! Measures what the integrity check at open costs: `Store::open` verifies the checksum of
//! every committed page before it trusts the file (a damaged file must be an error, not a
//! panic in redb), so start-up reads the whole store once.
//!
//! Method: for each size, a store filled with 1 KiB events in 64-event transactions in a
//! temporary directory (pass a directory as the first argument to test another disk, default
//! the system temp dir), closed; then, alternately five times, `Store::open` (checked) and a
//! plain `redb::Database::create` of the same file (the reference: no check); medians of
//! each. The page cache is warm for both, as it is for a restart under systemd; a cold boot
//! adds one sequential read of the file. Run:
//! `cargo run --release --example open_cost`.

use std::time::{Duration, Instant};

use interopd::store::{DB_FILE_NAME, Store};

const SIZES_MIB: [usize; 3] = [1, 16, 64];
const ROUNDS: usize = 5;
const EVENT_BYTES: usize = 1024;
const EVENTS_PER_TXN: usize = 64;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("| store | file | checked open (median) | plain redb open (median) | ratio |");
    println!("|---|---|---|---|---|");
    for mib in SIZES_MIB {
        let dir = tempfile::tempdir_in(&base).expect("temp dir");
        {
            let store = Store::open(dir.path()).expect("open");
            let event = vec![0x5au8; EVENT_BYTES];
            let events = mib * 1024;
            for _ in 0..events.div_ceil(EVENTS_PER_TXN) {
                let txn = store.begin().expect("begin");
                for _ in 0..EVENTS_PER_TXN {
                    txn.append_event(&event).expect("append");
                }
                txn.commit().expect("commit");
            }
        }
        let path = dir.path().join(DB_FILE_NAME);
        let file_bytes = std::fs::metadata(&path).expect("stat").len();
        let (mut checked, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            drop(Store::open(dir.path()).expect("checked open"));
            checked.push(t.elapsed());
            let t = Instant::now();
            drop(redb::Database::create(&path).expect("plain open"));
            plain.push(t.elapsed());
        }
        let (c, p) = (median(checked), median(plain));
        println!(
            "| {mib} MiB of events | {:.1} MiB | {:.1} ms | {:.1} ms | {:.1}× |",
            file_bytes as f64 / (1024.0 * 1024.0),
            c.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            c.as_secs_f64() / p.as_secs_f64().max(1e-9)
        );
    }
}
