//! Writes a store fixture of the current schema version for `tests/store_format.rs`: a state
//! directory with an identity, prekeys, a session with a peer, one outbox row and one inbox
//! row (schema 4 on: a group, a message from it and a group receipt row). Run: `cargo run --example store_fixture -- tests/data/store/v4` (into an empty
//! directory; `v1` was made the same way by schema version 1).
//! The fixture is committed; regenerate it only when adding a new schema version's fixture.

use interopd::signal::{self, Address};
use interopd::store::{
    DeviceReceipt, GroupMember, GroupRow, InboxRow, MessageNote, OutboxRow, OutboxStatus, Store,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: store_fixture DIR")?;
    let now = 1_700_000_000_000;
    let ours = Store::open(std::path::Path::new(&out))?;
    let peer_dir = tempfile::tempdir()?;
    let peer = Store::open(peer_dir.path())?;
    let rng = &mut rand::rng();
    let txn = peer.begin()?;
    signal::provision(&txn, rng, now, 2)?;
    let ids = signal::prekey_ids(&txn, 1)?;
    let bundle = signal::own_bundle(&txn, ids.first().copied())?;
    txn.commit()?;

    let txn = ours.begin()?;
    signal::provision(&txn, rng, now, 3)?;
    let peer_addr = Address::new("15550100", 0);
    signal::process_bundle(&txn, &peer_addr, &bundle, rng, now)?;
    let ct = signal::encrypt(&txn, &peer_addr, b"fixture", now)?;
    txn.outbox_insert(&OutboxRow {
        id: "3EB0000000000000000001".into(),
        to: "15550100".into(),
        kind: 1,
        status: OutboxStatus::Sent,
        created_ms: now,
        updated_ms: now,
        error_code: String::new(),
        content: b"fixture".to_vec(),
        stanza: ct.body,
    })?;
    txn.inbox_insert(
        "15550100/3EB0000000000000000002",
        &InboxRow {
            group: String::new(),
            id: "3EB0000000000000000002".into(),
            from: "15550100".into(),
            t_secs: 1_700_000_000,
            received_ms: now,
            content: b"hello".to_vec(),
        },
    )?;
    // Schema 3 on: a note on the outbox row (correlation, edited).
    txn.put_note(
        "3EB0000000000000000001",
        &MessageNote {
            correlation: "door-42".into(),
            edited: true,
            revoked: false,
            text: "fixture edited".into(),
            updated_ms: now,
        },
    )?;
    // Schema 4 on: a group, a message from it, and the receipts of one we sent to it.
    txn.put_group(
        "120363000000000001",
        &GroupRow {
            subject: "Fixture family".into(),
            creator: "acme-home@interop".into(),
            created_secs: 1_700_000_000,
            members: vec![
                GroupMember {
                    jid: "acme-home@interop".into(),
                    admin: true,
                },
                GroupMember {
                    jid: "15550100@s.whatsapp.net".into(),
                    admin: false,
                },
            ],
            key_holders: vec!["15550100:0@s.whatsapp.net".into()],
            updated_ms: now,
        },
    )?;
    txn.inbox_insert(
        "15550100@s.whatsapp.net|3EB0000000000000000003",
        &InboxRow {
            id: "3EB0000000000000000003".into(),
            from: "15550100".into(),
            group: "120363000000000001".into(),
            t_secs: 1_700_000_001,
            received_ms: now,
            content: b"in the group".to_vec(),
        },
    )?;
    txn.put_group_receipts(
        "3EB0000000000000000001",
        &[("15550100:0@s.whatsapp.net".into(), DeviceReceipt::Read)],
    )?;
    txn.commit()?;
    Ok(())
}
