//! Measures what group commit buys: the link applies the status changes of every event it
//! has decoded in one turn (acks, delivery and read receipts) in one store transaction,
//! instead of one transaction (one fsync) per change.
//!
//! Method: a fresh store in a temporary directory (on the disk under test: pass a directory
//! as the first argument, default the system temp dir), 2000 queued outbox rows, then the
//! same 2000 `queued → sent` changes applied through `engine::apply_statuses`, once with one
//! change per transaction and once in batches of `engine::EVENT_BATCH`. Both runs happen in
//! the same process, one after the other, so the ratio holds on a noisy shared machine even
//! when the absolute numbers do not. Run: `cargo run --release --example group_commit`.

use std::time::Instant;

use interopd::engine::{EVENT_BATCH, StatusChange, apply_statuses};
use interopd::events::EventBus;
use interopd::metrics::Metrics;
use interopd::store::{OutboxRow, OutboxStatus, Store};

const MESSAGES: usize = 2000;

fn fill(store: &Store, prefix: &str) -> Vec<StatusChange> {
    let txn = store.begin().expect("begin");
    let mut changes = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let id = format!("{prefix}{i:06}");
        txn.outbox_insert(&OutboxRow {
            id: id.clone(),
            to: "15550100".into(),
            kind: 1,
            status: OutboxStatus::Queued,
            created_ms: 1,
            updated_ms: 1,
            error_code: String::new(),
            content: vec![0x0a, 0x02, b'h', b'i'],
            stanza: vec![b'x'; 400],
        })
        .expect("insert");
        changes.push((id, OutboxStatus::Sent, String::new()));
    }
    txn.commit().expect("commit");
    changes
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let bus = EventBus::new(false, std::rc::Rc::new(Metrics::default()));

    let one = fill(&store, "A");
    let t0 = Instant::now();
    for c in &one {
        apply_statuses(&store, &bus, std::slice::from_ref(c), 2).expect("apply");
    }
    let single = t0.elapsed().as_secs_f64();

    let batched = fill(&store, "B");
    let t0 = Instant::now();
    for chunk in batched.chunks(EVENT_BATCH) {
        apply_statuses(&store, &bus, chunk, 2).expect("apply");
    }
    let grouped = t0.elapsed().as_secs_f64();

    let rate = |secs: f64| MESSAGES as f64 / secs;
    println!("status changes: {MESSAGES}");
    println!(
        "one commit per change:      {:>10.0} changes/s",
        rate(single)
    );
    println!(
        "group commit ({EVENT_BATCH} a batch): {:>10.0} changes/s",
        rate(grouped)
    );
    println!("ratio: {:.1}x", single / grouped);
}
