//! Groups in the hub core, with simulated users and one provider device that is offline (its
//! offline queue shows what it would get): control API, `w:g2` iqs, `w:gp2` notifications,
//! routing of group messages, the echo contact in a group, and rotation on removal.

use super::*;
use crate::store::DeviceRecord;
use interop_proto::group::MAX_GROUP_MEMBERS;

const T0: u64 = 1_700_000_000_000;

struct NoAccounts;

impl AccountBook for NoAccounts {
    fn lookup(&self, _: &str) -> Result<Option<AccountRecord>, StoreError> {
        Ok(None)
    }
}

fn hub() -> (tempfile::TempDir, Hub) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut hub = Hub::open(dir.path(), Box::new(NoAccounts), T0, &mut rng).unwrap();
    for (phone, behavior) in [
        ("+15550100", "echo"),
        ("+15550101", "silent"),
        ("+15550102", "silent"),
    ] {
        hub.create_user(phone, 1, behavior, T0, &mut rng).unwrap();
    }
    // A provider device with published keys, offline: what it is sent waits in its queue.
    let keys = interop_proto::signal_store::MemoryStore::default();
    let (me, signed, prekeys) = signal::provision(&keys, &mut rng, T0, 8).unwrap();
    let rec = DeviceRecord {
        registration_id: me.registration_id(),
        identity: me.public(),
        signed_prekey: None,
        enlisted_ms: T0,
    };
    hub.store.put_device("acme-home.1", &rec).unwrap();
    hub.store
        .upload_keys("acme-home.1", me.registration_id(), &signed, &prekeys)
        .unwrap();
    (dir, hub)
}

fn texts(hub: &Hub, phone: &str, group: &str) -> Vec<(String, String)> {
    hub.received(phone)
        .unwrap()
        .iter()
        .filter(|r| r["group"] == group)
        .map(|r| {
            (
                r["from"].as_str().unwrap_or("").to_owned(),
                r["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn queued(hub: &Hub, device: &str) -> Vec<Stanza> {
    hub.store
        .queued(device)
        .unwrap()
        .iter()
        .map(|q| stanza::parse(&q.xml).unwrap())
        .collect()
}

fn family(hub: &mut Hub) -> String {
    let members = ["+15550102", "+15550100", "+15550101", "acme-home"].map(String::from);
    hub.create_group("Family", &members, T0).unwrap().id
}

#[test]
fn a_group_text_reaches_every_member_and_the_echo_answers_in_the_group() {
    let (_d, mut hub) = hub();
    let id = family(&mut hub);
    let info = hub.group_info(&id).unwrap();
    assert_eq!(info.subject, "Family");
    assert_eq!(
        info.members[0],
        ("+15550102".into(), true),
        "the first is admin"
    );
    assert_eq!(info.members.len(), 4);

    let text = Message::text("dinner at 7");
    hub.sim_send_group("+15550102", &id, &text, T0, &mut rand::rng())
        .unwrap();
    let got = |phone| texts(&hub, phone, &id);
    assert!(got("+15550100").contains(&("15550102".into(), "dinner at 7".into())));
    assert!(got("+15550101").contains(&("15550102".into(), "dinner at 7".into())));
    // The echo contact answered in the group, readable by every other member.
    assert!(got("+15550102").contains(&("15550100".into(), "echo: dinner at 7".into())));
    assert!(got("+15550101").contains(&("15550100".into(), "echo: dinner at 7".into())));
    assert!(
        !got("+15550100").iter().any(|(_, t)| t.starts_with("echo:")),
        "nobody receives their own group message back"
    );

    // The provider device got the creation notice, then both messages, each with the
    // sender's key pairwise (its first message from that sender) and the one skmsg.
    let q = queued(&hub, "acme-home.1");
    let notice = q.iter().find(|s| s.tag == "notification").unwrap();
    assert_eq!(notice.attr_value("type"), Some("w:gp2"));
    assert_eq!(
        notice.attr_value("from"),
        Some(format!("{id}@g.us").as_str())
    );
    let group = notice
        .child_named("create")
        .unwrap()
        .child_named("group")
        .unwrap();
    assert_eq!(group.children_named("participant").count(), 4);
    let messages: Vec<&Stanza> = q.iter().filter(|s| s.tag == "message").collect();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        let parsed = interop_proto::group::parse_inbound(m).unwrap().unwrap();
        assert_eq!(parsed.group.as_str(), id);
        assert!(
            parsed.pairwise.is_some(),
            "each sender's first message carries its key"
        );
    }
    assert_eq!(
        messages[0].attr_value("participant"),
        Some("15550102:0@s.whatsapp.net")
    );
}

#[test]
fn a_member_s_key_is_given_once_and_a_removal_rotates_it() {
    let (_d, mut hub) = hub();
    let id = family(&mut hub);
    let mut rng = rand::rng();
    for t in ["one", "two"] {
        hub.sim_send_group("+15550101", &id, &Message::text(t), T0, &mut rng)
            .unwrap();
    }
    let from_101 = |hub: &Hub| -> Vec<Stanza> {
        queued(hub, "acme-home.1")
            .into_iter()
            .filter(|s| s.attr_value("participant") == Some("15550101:0@s.whatsapp.net"))
            .collect()
    };
    let before = from_101(&hub);
    assert_eq!(before.len(), 2);
    assert!(before[0].child_named("enc").unwrap().attr_value("type") != Some("skmsg"));
    assert_eq!(
        before[1].children_named("enc").count(),
        1,
        "the second message is the skmsg alone"
    );

    let info = hub.remove_group_member(&id, "+15550102", T0).unwrap();
    assert_eq!(info.members.len(), 3);
    let removal = queued(&hub, "acme-home.1")
        .into_iter()
        .filter(|s| s.tag == "notification")
        .find(|s| s.child_named("remove").is_some())
        .unwrap();
    assert_eq!(
        removal.child_named("remove").unwrap().children()[0].attr_value("jid"),
        Some("15550102@s.whatsapp.net")
    );

    hub.sim_send_group("+15550101", &id, &Message::text("after"), T0, &mut rng)
        .unwrap();
    // The new chain goes to the members left, pairwise again; the echo contact reads it.
    let after = from_101(&hub);
    assert_eq!(after.len(), 3);
    assert_eq!(
        after[2].children_named("enc").count(),
        2,
        "a fresh key, given again"
    );
    assert!(texts(&hub, "+15550100", &id).contains(&("15550101".into(), "after".into())));
    assert!(
        !texts(&hub, "+15550102", &id)
            .iter()
            .any(|(_, t)| t == "after"),
        "the removed member is sent nothing"
    );
}

#[test]
fn group_requests_fail_with_their_own_errors() {
    let (_d, mut hub) = hub();
    let id = family(&mut hub);
    let mut rng = rand::rng();
    assert!(matches!(
        hub.group_info("120363999999999999"),
        Err(ControlError::UnknownGroup)
    ));
    assert!(matches!(
        hub.create_group("  ", &["+15550100".into()], T0),
        Err(ControlError::BadRequest { .. })
    ));
    let crowd: Vec<String> = (0..=MAX_GROUP_MEMBERS)
        .map(|i| format!("acme-u{i}"))
        .collect();
    assert!(matches!(
        hub.create_group("Crowd", &crowd, T0),
        Err(ControlError::BadRequest { .. })
    ));
    assert!(matches!(
        hub.create_group("Ghost", &["+15559999".into()], T0),
        Err(ControlError::UnknownUser)
    ));
    hub.remove_group_member(&id, "+15550100", T0).unwrap();
    assert!(matches!(
        hub.sim_send_group("+15550100", &id, &Message::text("x"), T0, &mut rng),
        Err(ControlError::NotMember)
    ));
    assert!(matches!(
        hub.remove_group_member(&id, "+15550100", T0),
        Err(ControlError::NotMember)
    ));
    // A message from a non-member device is refused on the wire with its own code.
    let m = Stanza::new("message")
        .attr("id", "3EB0AABBCCDDEEFF001122")
        .attr("to", format!("{id}@g.us"))
        .attr("type", "text")
        .child(
            Stanza::new("enc")
                .attr("v", "2")
                .attr("type", "skmsg")
                .bytes(vec![1]),
        );
    let outsider = Jid::interop("acme-shed", Some(1));
    assert_eq!(
        hub.route(&outsider, &m, T0).map_err(Refusal::code),
        Err("not_member")
    );
    let m = m.attr("to", "120363999999999999@g.us");
    assert_eq!(
        hub.route(&outsider, &m, T0).map_err(Refusal::code),
        Err("unknown_group")
    );
}

#[test]
fn w_g2_iqs_create_query_add_and_leave() {
    let (_d, mut hub) = hub();
    let me = Jid::interop("acme-home", Some(1));
    let iq = |kind: &str, to: &str, op: Stanza| {
        Stanza::new("iq")
            .attr("id", "g1")
            .attr("type", kind)
            .attr("xmlns", "w:g2")
            .attr("to", to)
            .child(op)
    };
    let create = Stanza::new("create")
        .attr("subject", "House")
        .child(Stanza::new("participant").attr("jid", "15550100@s.whatsapp.net"));
    let r = hub.group_iq(&me, &iq("set", "g.us", create), T0);
    assert_eq!(r.attr_value("type"), Some("result"), "{r:?}");
    let g = r.child_named("group").unwrap();
    let id = g.attr_value("id").unwrap().to_owned();
    assert_eq!(g.attr_value("creator"), Some("acme-home@interop"));
    let admins: Vec<_> = g
        .children_named("participant")
        .filter(|p| p.attr_value("type") == Some("admin"))
        .map(|p| p.attr_value("jid"))
        .collect();
    assert_eq!(admins, [Some("acme-home@interop")]);

    let gid = format!("{id}@g.us");
    let add =
        Stanza::new("add").child(Stanza::new("participant").attr("jid", "15550101@s.whatsapp.net"));
    let r = hub.group_iq(&me, &iq("set", &gid, add), T0);
    assert_eq!(r.attr_value("type"), Some("result"));
    let r = hub.group_iq(&me, &iq("get", &gid, Stanza::new("query")), T0);
    let g = r.child_named("group").unwrap();
    assert_eq!(g.children_named("participant").count(), 3);
    let r = hub.group_iq(&me, &iq("get", "g.us", Stanza::new("participating")), T0);
    assert_eq!(r.child_named("groups").unwrap().children().len(), 1);

    let leave = Stanza::new("leave").child(Stanza::new("group").attr("id", id.as_str()));
    let r = hub.group_iq(&me, &iq("set", "g.us", leave), T0);
    assert_eq!(r.attr_value("type"), Some("result"));
    let r = hub.group_iq(&me, &iq("get", &gid, Stanza::new("query")), T0);
    assert_eq!(
        r.child_named("error").and_then(|e| e.attr_value("code")),
        Some("403"),
        "a former member may not read the group"
    );
    let r = hub.group_iq(&me, &iq("get", "1@g.us", Stanza::new("query")), T0);
    assert_eq!(
        r.child_named("error").and_then(|e| e.attr_value("code")),
        Some("404")
    );
}
