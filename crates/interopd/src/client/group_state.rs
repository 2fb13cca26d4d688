//! Group state in the [`Client`]: the household's requests to the gatekeeper (`<iq
//! xmlns="w:g2">`: create, query, list, add, remove, leave) and the gatekeeper's `w:gp2`
//! notifications. Either way our copy in the store's `groups` table is rewritten in one
//! transaction, and a member's removal rotates our sender key (docs/protocol.md 21.4): the
//! next send makes a new chain and hands it only to who is left.

use super::*;
use crate::group::{GroupId, MAX_SUBJECT_BYTES};
use crate::store::{GroupMember, GroupRow};

/// Most groups one `<participating/>` answer is read for; the rest are ignored.
pub const MAX_GROUPS_LISTED: usize = 256;

/// What the household asks the gatekeeper about groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// A new group with us as its creator and admin, and these members (user JIDs).
    Create {
        subject: String,
        members: Vec<Jid>,
    },
    /// The group's current state.
    Query {
        group: GroupId,
    },
    /// Every group we are in (our copy is brought up to date).
    List,
    Add {
        group: GroupId,
        members: Vec<Jid>,
    },
    Remove {
        group: GroupId,
        members: Vec<Jid>,
    },
    Leave {
        group: GroupId,
    },
}

/// What the iq was, for reading its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GroupOp {
    Create,
    Query,
    List,
    Add { group: GroupId, members: Vec<Jid> },
    Remove { group: GroupId, members: Vec<Jid> },
    Leave { group: GroupId },
}

/// The gatekeeper's answer to a [`GroupRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAnswer {
    /// The group as it is now (create, query, add, remove).
    Group { id: String, row: GroupRow },
    /// Every group we are in (list).
    Groups(Vec<(String, GroupRow)>),
    /// We left.
    Left,
    /// The gatekeeper refused: its `<error code text>`.
    Refused { code: u16, text: String },
}

/// Reads a `<group id subject creation creator><participant jid [type="admin"]/>…`.
fn parse_group(g: &Stanza, now_ms: u64) -> Option<(String, GroupRow)> {
    let id = GroupId::new(g.attr_value("id")?).ok()?;
    let subject: String = g.attr_value("subject").unwrap_or("").to_owned();
    if subject.len() > MAX_SUBJECT_BYTES {
        return None;
    }
    let creator = g
        .attr_value("creator")
        .filter(|c| c.len() <= crate::store::MAX_GROUP_JID_BYTES)
        .unwrap_or("")
        .to_owned();
    let mut members = Vec::new();
    for p in g.children_named("participant") {
        let user = Jid::parse(p.attr_value("jid")?).ok()?.to_user().to_string();
        if user.len() > crate::store::MAX_GROUP_JID_BYTES
            || members.len() >= crate::group::MAX_GROUP_MEMBERS
        {
            return None;
        }
        members.push(GroupMember {
            jid: user,
            admin: p.attr_value("type") == Some("admin"),
        });
    }
    Some((
        id.as_str().to_owned(),
        GroupRow {
            subject,
            creator,
            created_secs: g
                .attr_value("creation")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            members,
            key_holders: Vec::new(),
            updated_ms: now_ms,
        },
    ))
}

fn participants(members: &[Jid]) -> impl Iterator<Item = Stanza> + '_ {
    members
        .iter()
        .map(|m| Stanza::new("participant").attr("jid", m.to_user().to_string()))
}

impl Client {
    /// Sends `req` to the gatekeeper; its answer comes back as [`Event::GroupAnswer`] with
    /// the same `ticket`.
    pub fn group_request(&mut self, ticket: u64, req: GroupRequest, now_ms: u64) {
        let (op, to, kind, child) = match req {
            GroupRequest::Create { subject, members } => (
                GroupOp::Create,
                crate::group::GROUP_SERVER.to_owned(),
                "set",
                Stanza::new("create")
                    .attr("subject", subject)
                    .extend_children(participants(&members)),
            ),
            GroupRequest::Query { group } => {
                (GroupOp::Query, group.jid(), "get", Stanza::new("query"))
            }
            GroupRequest::List => (
                GroupOp::List,
                crate::group::GROUP_SERVER.to_owned(),
                "get",
                Stanza::new("participating"),
            ),
            GroupRequest::Add { group, members } => (
                GroupOp::Add {
                    group: group.clone(),
                    members: members.clone(),
                },
                group.jid(),
                "set",
                Stanza::new("add").extend_children(participants(&members)),
            ),
            GroupRequest::Remove { group, members } => (
                GroupOp::Remove {
                    group: group.clone(),
                    members: members.clone(),
                },
                group.jid(),
                "set",
                Stanza::new("remove").extend_children(participants(&members)),
            ),
            GroupRequest::Leave { group } => (
                GroupOp::Leave {
                    group: group.clone(),
                },
                crate::group::GROUP_SERVER.to_owned(),
                "set",
                Stanza::new("leave").child(Stanza::new("group").attr("id", group.as_str())),
            ),
        };
        let id = self.iq_id(Pending::Group { ticket, op });
        let s = Stanza::new("iq")
            .attr("id", id)
            .attr("type", kind)
            .attr("xmlns", "w:g2")
            .attr("to", to)
            .child(child);
        self.push(&s, now_ms);
    }

    /// The gatekeeper answered group request `ticket`: our copy follows it, then the
    /// answer is reported.
    pub(super) fn group_answer(
        &mut self,
        ticket: u64,
        op: GroupOp,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        if s.attr_value("type") != Some("result") {
            let e = s.child_named("error");
            let answer = GroupAnswer::Refused {
                code: e
                    .and_then(|e| e.attr_value("code"))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500),
                text: e
                    .and_then(|e| e.attr_value("text"))
                    .unwrap_or("internal")
                    .chars()
                    .take(64)
                    .collect(),
            };
            self.events.push_back(Event::GroupAnswer { ticket, answer });
            return Ok(());
        }
        let malformed = GroupAnswer::Refused {
            code: 502,
            text: "malformed answer".into(),
        };
        let txn = self.store.begin()?;
        let answer = match op {
            GroupOp::Create | GroupOp::Query => {
                match s.child_named("group").and_then(|g| parse_group(g, now_ms)) {
                    Some((id, mut row)) => {
                        if let Some(old) = txn.group(&id)? {
                            row.key_holders = old.key_holders;
                        }
                        txn.put_group(&id, &row)?;
                        GroupAnswer::Group { id, row }
                    }
                    None => malformed,
                }
            }
            GroupOp::List => {
                let mut all = Vec::new();
                for g in s
                    .child_named("groups")
                    .map(|g| {
                        g.children_named("group")
                            .take(MAX_GROUPS_LISTED)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
                {
                    if let Some((id, mut row)) = parse_group(g, now_ms) {
                        if let Some(old) = txn.group(&id)? {
                            row.key_holders = old.key_holders;
                        }
                        txn.put_group(&id, &row)?;
                        all.push((id, row));
                    }
                }
                // A group we hold that the whole list leaves out is one we are no longer in.
                if all.len() < MAX_GROUPS_LISTED {
                    for (id, _) in txn.groups()? {
                        if !all.iter().any(|(a, _)| *a == id)
                            && let Ok(g) = GroupId::new(&id)
                        {
                            self.forget_group(&txn, &g)?;
                        }
                    }
                }
                GroupAnswer::Groups(all)
            }
            GroupOp::Add { group, members } => {
                self.apply_members(&txn, &group, &members, true, now_ms)?;
                match txn.group(group.as_str())? {
                    Some(row) => GroupAnswer::Group {
                        id: group.as_str().to_owned(),
                        row,
                    },
                    None => malformed,
                }
            }
            GroupOp::Remove { group, members } => {
                self.apply_members(&txn, &group, &members, false, now_ms)?;
                match txn.group(group.as_str())? {
                    Some(row) => GroupAnswer::Group {
                        id: group.as_str().to_owned(),
                        row,
                    },
                    None => GroupAnswer::Left,
                }
            }
            GroupOp::Leave { group } => {
                self.forget_group(&txn, &group)?;
                GroupAnswer::Left
            }
        };
        txn.commit()?;
        self.events.push_back(Event::GroupAnswer { ticket, answer });
        Ok(())
    }

    /// Adds or removes `members` in our copy of `group`. A removal rotates our sender key;
    /// our own removal forgets the group.
    fn apply_members(
        &self,
        txn: &Txn,
        group: &GroupId,
        members: &[Jid],
        add: bool,
        now_ms: u64,
    ) -> Result<bool, ClientError> {
        let Some(mut row) = txn.group(group.as_str())? else {
            return Ok(false);
        };
        let me = self.hello.jid().to_user().to_string();
        let names: Vec<String> = members.iter().map(|m| m.to_user().to_string()).collect();
        if add {
            for n in names {
                if !row.has_member(&n) && row.members.len() < crate::group::MAX_GROUP_MEMBERS {
                    row.members.push(GroupMember {
                        jid: n,
                        admin: false,
                    });
                }
            }
        } else {
            if names.contains(&me) {
                self.forget_group(txn, group)?;
                return Ok(true);
            }
            let before = row.members.len();
            row.members.retain(|m| !names.contains(&m.jid));
            if row.members.len() != before {
                // Rotation: the removed member holds our chain; the next send starts anew.
                signal::forget_sender_key(txn, group.as_str(), &self.hello.jid().address())?;
                row.key_holders.clear();
            }
        }
        row.updated_ms = now_ms;
        txn.put_group(group.as_str(), &row)?;
        Ok(true)
    }

    /// We are no longer in `group`: our copy and our chain go.
    fn forget_group(&self, txn: &Txn, group: &GroupId) -> Result<(), ClientError> {
        txn.delete_group(group.as_str())?;
        signal::forget_sender_key(txn, group.as_str(), &self.hello.jid().address())?;
        Ok(())
    }

    /// A `<notification type="w:gp2" from="{id}@g.us">`: `create`, `add` or `remove`.
    /// Our copy follows it; the notification is reported as [`Event::GroupChanged`].
    pub(super) fn group_notification(
        &mut self,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let Some(group) = s
            .attr_value("from")
            .and_then(|f| GroupId::parse_jid(f).ok())
        else {
            return Ok(());
        };
        let Some(change) = s.children().first() else {
            return Ok(());
        };
        let members: Vec<Jid> = change
            .children_named("participant")
            .filter_map(|p| Jid::parse(p.attr_value("jid")?).ok())
            .take(crate::group::MAX_GROUP_MEMBERS)
            .collect();
        let txn = self.store.begin()?;
        let known = match change.tag.as_str() {
            "create" => {
                match change
                    .child_named("group")
                    .and_then(|g| parse_group(g, now_ms))
                {
                    Some((id, row)) if id == group.as_str() => {
                        if txn.group(&id)?.is_none() {
                            txn.put_group(&id, &row)?;
                        }
                        true
                    }
                    _ => false,
                }
            }
            "add" => {
                let me = self.hello.jid().to_user();
                let known = self.apply_members(&txn, &group, &members, true, now_ms)?;
                if !known && members.iter().any(|m| m.to_user() == me) {
                    // We were added to a group we did not know: ask what it is. Ticket 0 is
                    // the client's own; nobody waits for its answer.
                    self.group_request(
                        0,
                        GroupRequest::Query {
                            group: group.clone(),
                        },
                        now_ms,
                    );
                }
                true
            }
            "remove" => self.apply_members(&txn, &group, &members, false, now_ms)?,
            _ => false,
        };
        txn.commit()?;
        if known {
            self.events.push_back(Event::GroupChanged {
                group,
                change: change.tag.clone(),
                members: members.into_iter().map(|m| m.to_user()).collect(),
            });
        }
        Ok(())
    }
}
