//! The store is a file format: a store written by an earlier schema must open in every later
//! build. `tests/data/store/v1/`, `v2/` and `v3/` were written by schema versions 1, 2 and 3 (see
//! `examples/store_fixture.rs`); this test opens a copy of each, migrating the older, and
//! reads every kind of row back.

use std::path::Path;

use interopd::signal::{self, Address};
use interopd::store::{OutboxStatus, SCHEMA_VERSION, Store};

fn copy_fixture(version: &str) -> tempfile::TempDir {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("tests/data/store")
        .join(version);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn schema_v1_store_opens_migrated_and_every_row_reads_back() {
    let dir = copy_fixture("v1");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        SCHEMA_VERSION,
        "migrated at open"
    );
    let before = identity_of(&store);
    drop(store);
    // The migrated file opens again as it is, with the same identity.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(identity_of(&store), before);
    every_row_reads_back(&store);
}

#[test]
fn schema_v2_store_opens_migrated_and_every_row_reads_back() {
    let dir = copy_fixture("v2");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    every_row_reads_back(&store);
    // Schema 3 added `message_notes`: a migrated store has it, empty.
    let txn = store.begin().unwrap();
    assert_eq!(txn.note("3EB0000000000000000001").unwrap(), None);
}

#[test]
fn schema_v3_store_opens_and_every_row_and_its_note_read_back() {
    let dir = copy_fixture("v3");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    every_row_reads_back(&store);
    // Schema 4 added the group tables: a migrated store has them, empty.
    assert!(store.begin().unwrap().groups().unwrap().is_empty());
    let txn = store.begin().unwrap();
    let note = txn.note("3EB0000000000000000001").unwrap().unwrap();
    assert_eq!(
        (note.correlation.as_str(), note.edited, note.text.as_str()),
        ("door-42", true, "fixture edited")
    );
}

#[test]
fn schema_v4_store_opens_and_its_group_rows_read_back() {
    let dir = copy_fixture("v4");
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 4);
    let txn = store.begin().unwrap();
    let g = txn.group("120363000000000001").unwrap().unwrap();
    assert_eq!(g.subject, "Fixture family");
    assert_eq!(g.members.len(), 2);
    assert!(g.members[0].admin && !g.members[1].admin);
    assert_eq!(g.key_holders, ["15550100:0@s.whatsapp.net"]);
    let inbox = txn.inbox_after(0, 10).unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0].1.group, "", "a 1:1 row stays row version 1");
    assert_eq!(inbox[1].1.group, "120363000000000001");
    assert_eq!(inbox[1].1.content, b"in the group");
    let receipts = txn
        .group_receipts("3EB0000000000000000001")
        .unwrap()
        .unwrap();
    assert_eq!(
        receipts,
        [(
            "15550100:0@s.whatsapp.net".to_string(),
            interopd::store::DeviceReceipt::Read
        )]
    );
}

fn identity_of(store: &Store) -> ([u8; 32], u32) {
    let txn = store.begin().unwrap();
    let me = signal::local_identity(&txn)
        .unwrap()
        .expect("identity kept");
    (me.public(), me.registration_id())
}

fn every_row_reads_back(store: &Store) {
    let txn = store.begin().unwrap();
    let me = signal::local_identity(&txn)
        .unwrap()
        .expect("identity kept");
    assert!((1..=0x3FFF).contains(&me.registration_id()));
    signal::check_signed_prekey(&txn).unwrap();
    assert_eq!(signal::prekey_count(&txn).unwrap(), 3);
    let peer = Address::new("15550100", 0);
    assert!(signal::has_session(&txn, &peer).unwrap());
    // The stored session still encrypts.
    signal::encrypt(&txn, &peer, b"after upgrade", 1_700_000_000_001).unwrap();
    let (_, row) = txn.outbox_by_id("3EB0000000000000000001").unwrap().unwrap();
    assert_eq!(row.status, OutboxStatus::Sent);
    assert_eq!(row.to, "15550100");
    let inbox = txn.inbox_after(0, 10).unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].1.content, b"hello");
}
