//! Groups through the engine against the hub core, on the virtual clock of `tests.rs`: the
//! gatekeeper's group reaches our copy at login, a send hands our sender key out once, the
//! simulated members decrypt it, their receipts add up per device, and a removal rotates
//! our chain.

use super::tests::{Rig, mid};
use super::*;
use crate::group::{self, GroupId};
use crate::stanza::Stanza;
use crate::store::DeviceReceipt;

const ECHO: &str = "15550100";
const SILENT: &str = "15550101";

/// A rig logged in with a second, silent member, and a group of us and both.
fn rig_with_group() -> (Rig, GroupId) {
    let mut rig = Rig::up("echo");
    rig.hub
        .create_user(&format!("+{SILENT}"), 1, "silent", rig.now, &mut rig.rng)
        .unwrap();
    let info = rig
        .hub
        .create_group(
            "Family",
            &["acme-home".into(), format!("+{ECHO}"), format!("+{SILENT}")],
            rig.now,
        )
        .unwrap();
    rig.pump();
    let gid = GroupId::new(&info.id).unwrap();
    let txn = rig.store.begin().unwrap();
    let g = txn
        .group(gid.as_str())
        .unwrap()
        .expect("the create notification");
    assert_eq!(g.members.len(), 3);
    (rig, gid)
}

fn queue_group(rig: &mut Rig, gid: &GroupId, label: &str, text: &str) {
    rig.queue_to(&gid.jid(), label, text);
    rig.engine.handle_api_wake(rig.now);
    rig.pump();
}

/// The devices a group `<message>` hands our key to (its `<participants>`), if any.
fn key_handovers(m: &Stanza) -> Option<Vec<String>> {
    Some(
        m.child_named("participants")?
            .children_named("to")
            .filter_map(|t| t.attr_value("jid").map(str::to_owned))
            .collect(),
    )
}

fn group_messages(rig: &Rig, id: &str) -> Vec<Stanza> {
    rig.sent
        .iter()
        .filter(|s| s.tag == "message" && s.attr_value("id") == Some(id))
        .cloned()
        .collect()
}

fn received_texts(rig: &Rig, phone: &str) -> Vec<String> {
    rig.hub
        .received(&format!("+{phone}"))
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

fn status(rig: &Rig, label: &str) -> OutboxStatus {
    let txn = rig.store.begin().unwrap();
    txn.outbox_by_id(&mid(label)).unwrap().unwrap().1.status
}

#[test]
fn a_group_send_hands_our_key_out_once_and_receipts_add_up_per_device() {
    let (mut rig, gid) = rig_with_group();
    let devices = [
        format!("{ECHO}:0@s.whatsapp.net"),
        format!("{SILENT}:0@s.whatsapp.net"),
    ];

    queue_group(&mut rig, &gid, "g-1", "Dinner at 7");
    let first = group_messages(&rig, &mid("g-1"));
    assert_eq!(first.len(), 1, "{first:?}");
    let tos = key_handovers(&first[0]).expect("the first send distributes our key");
    assert_eq!(tos.len(), 2, "{tos:?}");
    assert_eq!(
        first[0].attr_value("phash"),
        Some(group::phash(&devices).as_str())
    );
    for phone in [ECHO, SILENT] {
        assert!(
            received_texts(&rig, phone).contains(&"Dinner at 7".to_owned()),
            "{phone}"
        );
    }
    // The echo member reads, the silent one only delivers: the row is delivered, not read.
    assert_eq!(status(&rig, "g-1"), OutboxStatus::Delivered);
    let txn = rig.store.begin().unwrap();
    let mut receipts = txn.group_receipts(&mid("g-1")).unwrap().unwrap();
    receipts.sort();
    assert_eq!(
        receipts,
        [
            (devices[0].clone(), DeviceReceipt::Read),
            (devices[1].clone(), DeviceReceipt::Delivered),
        ]
    );
    drop(txn);

    // The second send finds both devices holding our key: no pairwise part at all.
    queue_group(&mut rig, &gid, "g-2", "Bring bread");
    let second = group_messages(&rig, &mid("g-2"));
    assert!(
        second[0].child_named("participants").is_none(),
        "{second:?}"
    );
    for phone in [ECHO, SILENT] {
        assert!(
            received_texts(&rig, phone).contains(&"Bring bread".to_owned()),
            "{phone}"
        );
    }
}

#[test]
fn a_removed_member_never_gets_the_new_chain_and_the_rest_still_read() {
    let (mut rig, gid) = rig_with_group();
    queue_group(&mut rig, &gid, "g-1", "one");
    let own = Jid::parse("acme-home:1@interop").unwrap().address();
    let txn = rig.store.begin().unwrap();
    assert!(crate::signal::has_sender_key(&txn, gid.as_str(), &own).unwrap());
    drop(txn);

    rig.hub
        .remove_group_member(gid.as_str(), &format!("+{SILENT}"), rig.now)
        .unwrap();
    rig.pump();
    let txn = rig.store.begin().unwrap();
    assert!(
        !crate::signal::has_sender_key(&txn, gid.as_str(), &own).unwrap(),
        "the removal forgot our chain"
    );
    let g = txn.group(gid.as_str()).unwrap().unwrap();
    assert!(g.key_holders.is_empty());
    assert_eq!(g.members.len(), 2);
    drop(txn);

    queue_group(&mut rig, &gid, "g-2", "two");
    let sent = group_messages(&rig, &mid("g-2"));
    let tos = key_handovers(&sent[0]).expect("the new chain goes out again");
    assert_eq!(tos, [format!("{ECHO}:0@s.whatsapp.net")]);
    assert!(received_texts(&rig, ECHO).contains(&"two".to_owned()));
    assert!(!received_texts(&rig, SILENT).contains(&"two".to_owned()));
    assert_eq!(status(&rig, "g-2"), OutboxStatus::Read);
}

#[test]
fn a_phash_mismatch_in_the_ack_refreshes_device_lists_so_the_next_send_reaches_a_new_device() {
    let mut rig = Rig::up("echo");
    // The second member has two devices, but our cached list (fresh by its timestamp) only
    // knows the first: the gatekeeper's participant list differs from ours.
    rig.hub
        .create_user(&format!("+{SILENT}"), 2, "silent", rig.now, &mut rig.rng)
        .unwrap();
    let txn = rig.store.begin().unwrap();
    txn.put_device_list(
        SILENT,
        &crate::store::DeviceList {
            fetched_ms: rig.now,
            devices: vec![0],
        },
    )
    .unwrap();
    txn.commit().unwrap();
    let info = rig
        .hub
        .create_group(
            "Family",
            &["acme-home".into(), format!("+{ECHO}"), format!("+{SILENT}")],
            rig.now,
        )
        .unwrap();
    rig.pump();
    let gid = GroupId::new(&info.id).unwrap();

    queue_group(&mut rig, &gid, "g-1", "one");
    let ack = rig.hub_acks_phash(&mid("g-1"));
    let sent = group_messages(&rig, &mid("g-1"));
    assert_ne!(
        sent[0].attr_value("phash"),
        Some(ack.as_str()),
        "stale on purpose"
    );
    let txn = rig.store.begin().unwrap();
    let list = txn.device_list(SILENT).unwrap();
    assert!(
        list.as_ref().is_none_or(|l| l.devices.is_empty()),
        "the mismatch dropped the list: {list:?}"
    );
    drop(txn);

    queue_group(&mut rig, &gid, "g-2", "two");
    let second = group_messages(&rig, &mid("g-2"));
    let tos = key_handovers(&second[0]).expect("the new device gets our key");
    assert_eq!(tos, [format!("{SILENT}:1@s.whatsapp.net")]);
    assert_eq!(
        second[0].attr_value("phash"),
        Some(rig.hub_acks_phash(&mid("g-2")).as_str()),
        "now ours and the gatekeeper's agree"
    );
}

impl Rig {
    /// The `phash` the gatekeeper put on its ack of message `id`.
    fn hub_acks_phash(&self, id: &str) -> String {
        self.received
            .iter()
            .find(|a| a.tag == "ack" && a.attr_value("id") == Some(id))
            .and_then(|a| a.attr_value("phash").map(str::to_owned))
            .expect("an ack with a phash")
    }
}
