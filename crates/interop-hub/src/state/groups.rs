//! Groups in the hub: create, query, add and remove members (from the control API and from
//! `<iq xmlns="w:g2">`), the `w:gp2` notifications every member device gets on a change, and
//! the routing of a group message: the one `skmsg` to every member device, each pairwise
//! `<enc>` only to its own device (docs/protocol.md section 21).

use super::*;
use crate::store::{GroupMember, GroupRecord};
use interop_proto::group::{self, GroupId, MAX_GROUP_MEMBERS, MAX_SUBJECT_BYTES};

/// Most groups one user (account or simulated user) may be a member of.
pub const MAX_GROUPS_PER_USER: usize = 256;

/// A group as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: String,
    pub subject: String,
    pub creator: String,
    pub created_ms: u64,
    /// `(+phone or account, admin)`.
    pub members: Vec<(String, bool)>,
}

/// `+15550100` or an account name as a user JID.
fn member_jid(text: &str) -> Result<Jid, ControlError> {
    let bad = |e: jid::JidError| ControlError::BadRequest {
        detail: format!("member {text:?}: {e}"),
    };
    if text.starts_with('+') {
        return Ok(Jid::whatsapp(jid::parse_phone(text).map_err(bad)?, None));
    }
    if let Ok(j) = Jid::parse(text) {
        return Ok(j.to_user());
    }
    jid::check_account(text).map_err(bad)?;
    Ok(Jid::interop(text.to_owned(), None))
}

/// How the control API names a member.
fn member_name(user: &str) -> String {
    match Jid::parse(user) {
        Ok(j) if j.server == Server::WhatsApp => format!("+{}", j.user),
        Ok(j) => j.user,
        Err(_) => user.to_owned(),
    }
}

fn info(rec: &GroupRecord) -> GroupInfo {
    GroupInfo {
        id: rec.id.clone(),
        subject: rec.subject.clone(),
        creator: member_name(&rec.creator),
        created_ms: rec.created_ms,
        members: rec
            .members
            .iter()
            .map(|m| (member_name(&m.jid), m.admin))
            .collect(),
    }
}

fn participant(jid: &str, admin: bool) -> Stanza {
    let p = Stanza::new("participant").attr("jid", jid);
    if admin { p.attr("type", "admin") } else { p }
}

/// `<group id subject creation creator><participant jid [type="admin"]/>…</group>`.
fn group_stanza(rec: &GroupRecord) -> Stanza {
    Stanza::new("group")
        .attr("id", rec.id.as_str())
        .attr("subject", rec.subject.as_str())
        .attr("creation", (rec.created_ms / 1000).to_string())
        .attr("creator", rec.creator.as_str())
        .extend_children(rec.members.iter().map(|m| participant(&m.jid, m.admin)))
}

impl Hub {
    fn check_subject(subject: &str) -> Result<(), ControlError> {
        if subject.trim().is_empty() || subject.len() > MAX_SUBJECT_BYTES {
            return Err(ControlError::BadRequest {
                detail: format!("subject must be 1..={MAX_SUBJECT_BYTES} bytes, not blank"),
            });
        }
        Ok(())
    }

    fn check_new_member(&self, user: &Jid) -> Result<(), ControlError> {
        if user.server == Server::WhatsApp && !self.sims.users.contains_key(&user.user) {
            return Err(ControlError::UnknownUser);
        }
        if self.store.groups_of(&user.to_string())?.len() >= MAX_GROUPS_PER_USER {
            return Err(ControlError::BadRequest {
                detail: format!("{user} is in {MAX_GROUPS_PER_USER} groups already"),
            });
        }
        Ok(())
    }

    fn group_record(&self, id: &str) -> Result<GroupRecord, ControlError> {
        let id = GroupId::new(id).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        self.store
            .group(id.as_str())?
            .ok_or(ControlError::UnknownGroup)
    }

    /// Creates a group of `members` (`+phone` or account names; the first is its admin),
    /// made by `creator` (a user JID, or `hub`). Every member device is notified.
    pub(super) fn make_group(
        &mut self,
        creator: &str,
        subject: &str,
        members: &[Jid],
        now_ms: u64,
    ) -> Result<GroupRecord, ControlError> {
        Self::check_subject(subject)?;
        if members.is_empty() || members.len() > MAX_GROUP_MEMBERS {
            return Err(ControlError::BadRequest {
                detail: format!("a group has 1..={MAX_GROUP_MEMBERS} members"),
            });
        }
        let mut list: Vec<GroupMember> = Vec::with_capacity(members.len());
        for m in members {
            let jid = m.to_user().to_string();
            if list.iter().any(|x| x.jid == jid) {
                continue;
            }
            self.check_new_member(m)?;
            list.push(GroupMember {
                admin: list.is_empty(),
                jid,
            });
        }
        let seq = self.store.next_counter("group_seq")?;
        let rec = GroupRecord {
            id: format!("120363{seq:012}"),
            subject: subject.to_owned(),
            creator: creator.to_owned(),
            created_ms: now_ms,
            members: list,
        };
        self.store.put_group(&rec, &[])?;
        let n = Stanza::new("create").child(group_stanza(&rec));
        self.notify_group(&rec, creator, n, &[], now_ms);
        Ok(rec)
    }

    /// `POST /groups`.
    pub fn create_group(
        &mut self,
        subject: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<GroupInfo, ControlError> {
        let jids = members
            .iter()
            .map(|m| member_jid(m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(info(&self.make_group("hub", subject, &jids, now_ms)?))
    }

    /// `GET /groups/{id}`.
    pub fn group_info(&self, id: &str) -> Result<GroupInfo, ControlError> {
        Ok(info(&self.group_record(id)?))
    }

    /// Adds `members` to group `id` on behalf of `actor` (a user JID or `hub`).
    pub(super) fn add_members(
        &mut self,
        id: &str,
        actor: &str,
        members: &[Jid],
        now_ms: u64,
    ) -> Result<GroupRecord, ControlError> {
        let mut rec = self.group_record(id)?;
        let mut added = Vec::new();
        for m in members {
            let jid = m.to_user().to_string();
            if rec.has_member(&jid) {
                continue;
            }
            if rec.members.len() >= MAX_GROUP_MEMBERS {
                return Err(ControlError::BadRequest {
                    detail: format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                });
            }
            self.check_new_member(m)?;
            rec.members.push(GroupMember {
                jid: jid.clone(),
                admin: false,
            });
            added.push(jid);
        }
        self.store.put_group(&rec, &[])?;
        if !added.is_empty() {
            let n = Stanza::new("add").extend_children(added.iter().map(|j| participant(j, false)));
            self.notify_group(&rec, actor, n, &[], now_ms);
        }
        Ok(rec)
    }

    /// Removes `members` from group `id` on behalf of `actor`. The removed are notified
    /// too; the simulated users left in the group rotate their sender keys, so the removed
    /// cannot read what they send next.
    pub(super) fn remove_members(
        &mut self,
        id: &str,
        actor: &str,
        members: &[Jid],
        now_ms: u64,
    ) -> Result<GroupRecord, ControlError> {
        let mut rec = self.group_record(id)?;
        let gone: Vec<String> = members
            .iter()
            .map(|m| m.to_user().to_string())
            .filter(|j| rec.has_member(j))
            .collect();
        if gone.is_empty() {
            return Err(ControlError::NotMember);
        }
        rec.members.retain(|m| !gone.contains(&m.jid));
        self.store.put_group(&rec, &gone)?;
        let removed: Vec<Jid> = gone.iter().filter_map(|j| Jid::parse(j).ok()).collect();
        let n = Stanza::new("remove").extend_children(gone.iter().map(|j| participant(j, false)));
        self.notify_group(&rec, actor, n, &removed, now_ms);
        let group = GroupId::new(&rec.id).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        for m in &rec.members {
            if let Ok(j) = Jid::parse(&m.jid)
                && let Some(u) = self.sims.users.get_mut(&j.user)
                && j.server == Server::WhatsApp
                && let Err(e) = u.rotate_sender_key(&group)
            {
                log::error!("hub: simulated {}: {e}", j.user);
            }
        }
        Ok(rec)
    }

    /// `POST /groups/{id}/members`.
    pub fn add_group_member(
        &mut self,
        id: &str,
        member: &str,
        now_ms: u64,
    ) -> Result<GroupInfo, ControlError> {
        let m = member_jid(member)?;
        Ok(info(&self.add_members(id, "hub", &[m], now_ms)?))
    }

    /// `DELETE /groups/{id}/members/{member}`.
    pub fn remove_group_member(
        &mut self,
        id: &str,
        member: &str,
        now_ms: u64,
    ) -> Result<GroupInfo, ControlError> {
        let m = member_jid(member)?;
        Ok(info(&self.remove_members(id, "hub", &[m], now_ms)?))
    }

    /// Every device of every member of `rec`, as device JIDs.
    pub(super) fn member_devices(&self, rec: &GroupRecord) -> Vec<Jid> {
        let mut out = Vec::new();
        for m in &rec.members {
            let Ok(user) = Jid::parse(&m.jid) else {
                continue;
            };
            for d in self.store.devices_of(&user.user).unwrap_or_default() {
                out.push(user.with_device(d));
            }
        }
        out
    }

    /// `<notification type="w:gp2" from="{group}" participant="{actor}">{change}` to every
    /// device of our (interop) members, and of `also` (members just removed).
    fn notify_group(
        &mut self,
        rec: &GroupRecord,
        actor: &str,
        change: Stanza,
        also: &[Jid],
        now_ms: u64,
    ) {
        let gid = format!("{}@{}", rec.id, group::GROUP_SERVER);
        let n = Stanza::new("notification")
            .attr("type", "w:gp2")
            .attr("from", gid)
            .attr("participant", actor)
            .child(change);
        let users: Vec<Jid> = rec
            .members
            .iter()
            .filter_map(|m| Jid::parse(&m.jid).ok())
            .chain(also.iter().cloned())
            .filter(|j| j.server == Server::Interop)
            .collect();
        for u in users {
            for d in self.store.devices_of(&u.user).unwrap_or_default() {
                self.notify(&u.with_device(d), n.clone(), now_ms);
            }
        }
    }

    /// Routes a `<message to="{id}@g.us">` from member device `from`: to every other device
    /// of every member, each copy with its own pairwise `<enc>` (if the sender gave one) and
    /// the one `skmsg`.
    pub(super) fn route_group_message(
        &mut self,
        from: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<super::routing::Routed, Refusal> {
        let to = s.attr_value("to").ok_or(Refusal::BadRequest)?;
        let gid = GroupId::parse_jid(to).map_err(|_| Refusal::BadRequest)?;
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        content::MessageId::parse(id).map_err(|_| Refusal::BadRequest)?;
        let kind = s.attr_value("type").ok_or(Refusal::BadRequest)?;
        if !matches!(kind, "text" | "media" | "reaction") {
            return Err(Refusal::BadRequest);
        }
        let rec = self
            .store
            .group(gid.as_str())?
            .ok_or(Refusal::UnknownGroup)?;
        if !rec.has_member(&from.to_user().to_string()) {
            return Err(Refusal::NotMember);
        }
        let skmsgs: Vec<&Stanza> = s
            .children_named("enc")
            .filter(|e| e.attr_value("type") == Some(group::SKMSG))
            .collect();
        let [skmsg] = skmsgs.as_slice() else {
            return Err(Refusal::BadRequest);
        };
        if skmsg.payload().is_none() || skmsg.attr_value("v") != Some("2") {
            return Err(Refusal::BadRequest);
        }
        let devices: Vec<Jid> = self
            .member_devices(&rec)
            .into_iter()
            .filter(|d| d != from)
            .collect();
        // The ack's phash: every member device but the sender's, which the sender compares with
        // its own to tell that its device lists are stale.
        let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let phash = group::phash(&names);
        let mut pairwise: HashMap<Jid, Stanza> = HashMap::new();
        if let Some(p) = s.child_named("participants") {
            let tos: Vec<&Stanza> = p.children_named("to").collect();
            if tos.len() > MAX_GROUP_MEMBERS * crate::users::MAX_SIM_DEVICES as usize {
                return Err(Refusal::BadRequest);
            }
            for t in tos {
                let target = t
                    .attr_value("jid")
                    .and_then(|j| Jid::parse(j).ok())
                    .ok_or(Refusal::BadRequest)?;
                if !devices.contains(&target) {
                    return Err(Refusal::UnknownDevice);
                }
                let enc = t.child_named("enc").ok_or(Refusal::BadRequest)?;
                if enc.payload().is_none()
                    || !matches!(enc.attr_value("type"), Some("pkmsg" | "msg"))
                    || enc.attr_value("v") != Some("2")
                {
                    return Err(Refusal::BadRequest);
                }
                pairwise.insert(target, enc.clone());
            }
        }
        for target in devices {
            let mut out = Stanza::new("message")
                .attr("id", id)
                .attr("from", gid.jid())
                .attr("participant", from.to_string())
                .attr("to", target.to_user().to_string())
                .attr("type", kind)
                .attr("t", unix_secs(now_ms));
            if let Some(enc) = pairwise.remove(&target) {
                out = out.child(enc);
            }
            out = out.child((*skmsg).clone());
            self.deliver(&target, out, &ack_key("message", id, ""))?;
        }
        self.stats.stanzas_routed += 1;
        Ok(super::routing::Routed {
            to: gid.jid(),
            phash: Some(phash),
        })
    }

    /// Routes a `<receipt to="{id}@g.us" participant="{sender device}">` from `from` to the
    /// devices of the message's sender, naming the group and `from` as the participant.
    pub(super) fn route_group_receipt(
        &mut self,
        from: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<String, Refusal> {
        let to = s.attr_value("to").ok_or(Refusal::BadRequest)?;
        let gid = GroupId::parse_jid(to).map_err(|_| Refusal::BadRequest)?;
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        let kind = s.attr_value("type").unwrap_or("");
        if !matches!(kind, "" | "read" | "retry") {
            return Err(Refusal::BadRequest);
        }
        let sender = s
            .attr_value("participant")
            .and_then(|p| Jid::parse(p).ok())
            .ok_or(Refusal::BadRequest)?;
        let rec = self
            .store
            .group(gid.as_str())?
            .ok_or(Refusal::UnknownGroup)?;
        if !rec.has_member(&from.to_user().to_string()) {
            return Err(Refusal::NotMember);
        }
        let mut out = Stanza::new("receipt")
            .attr("id", id)
            .attr("from", gid.jid())
            .attr("participant", from.to_string())
            .attr("to", sender.to_user().to_string())
            .attr("t", unix_secs(now_ms));
        if !kind.is_empty() {
            out = out.attr("type", kind);
        }
        out.content = s.content.clone();
        let devices = match sender.device {
            Some(d) => vec![d],
            None => self.store.devices_of(&sender.user)?,
        };
        for d in devices {
            self.deliver(
                &sender.with_device(d),
                out.clone(),
                &ack_key("receipt", id, kind),
            )?;
        }
        self.stats.stanzas_routed += 1;
        Ok(gid.jid())
    }

    /// Makes a simulated user send `message` to group `id` (`POST /users/{p}/send` with
    /// `"group"`). Returns the message id.
    pub fn sim_send_group<R: Rng + CryptoRng>(
        &mut self,
        phone: &str,
        id: &str,
        message: &Message,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<String, ControlError> {
        let digits = self.sim_phone(phone)?;
        let rec = self.group_record(id)?;
        let from_user = Jid::whatsapp(digits.clone(), None);
        if !rec.has_member(&from_user.to_string()) {
            return Err(ControlError::NotMember);
        }
        let group = GroupId::new(&rec.id).map_err(|e| ControlError::BadRequest {
            detail: e.to_string(),
        })?;
        let Hub {
            sims, store, stats, ..
        } = self;
        let Some(user) = sims.users.get_mut(&digits) else {
            return Err(ControlError::UnknownUser);
        };
        let mut dir = SimDirectory {
            store,
            stats,
            drained: Vec::new(),
        };
        let result = user.encrypt_group_message(&group, message, &mut dir, now_ms, rng);
        let drained = dir.drained;
        for d in drained {
            self.prekeys_low(&d, now_ms, rng);
        }
        let stanza = result?;
        let msg_id = stanza.attr_value("id").unwrap_or("").to_owned();
        let routed = self.route(&from_user.with_device(0), &stanza, now_ms);
        self.drain_sims(now_ms, rng);
        routed.map_err(|r| ControlError::BadRequest {
            detail: r.text().into(),
        })?;
        Ok(msg_id)
    }

    /// `<iq xmlns="w:g2">` from `device`: `get` with `<query/>` (to the group) or
    /// `<participating/>` (to `g.us`); `set` with `<create subject>` (to `g.us`), `<add>` or
    /// `<remove>` (to the group), or `<leave><group id/></leave>` (to `g.us`).
    pub(super) fn group_iq(&mut self, device: &Jid, s: &Stanza, now_ms: u64) -> Stanza {
        let id = s.attr_value("id").unwrap_or("");
        let me = device.to_user().to_string();
        let result = Stanza::new("iq").attr("id", id).attr("type", "result");
        let to = s.attr_value("to").unwrap_or("");
        let Some(op) = s.children().first() else {
            return iq_error(id, 400, "bad_request");
        };
        let participants = |op: &Stanza| -> Result<Vec<Jid>, ControlError> {
            op.children_named("participant")
                .map(|p| {
                    p.attr_value("jid")
                        .and_then(|j| Jid::parse(j).ok())
                        .map(|j| j.to_user())
                        .ok_or_else(|| ControlError::BadRequest {
                            detail: "participant jid".into(),
                        })
                })
                .collect()
        };
        let answer: Result<Stanza, ControlError> = match (s.attr_value("type"), op.tag.as_str()) {
            (Some("get"), "query") => {
                let gid = GroupId::parse_jid(to).map_err(|e| ControlError::BadRequest {
                    detail: e.to_string(),
                });
                gid.and_then(|g| self.group_record(g.as_str()))
                    .and_then(|rec| {
                        if rec.has_member(&me) {
                            Ok(result.clone().child(group_stanza(&rec)))
                        } else {
                            Err(ControlError::NotMember)
                        }
                    })
            }
            (Some("get"), "participating") => {
                self.store.groups_of(&me).map_err(Into::into).map(|ids| {
                    let groups = ids
                        .iter()
                        .filter_map(|g| self.store.group(g).ok().flatten())
                        .map(|rec| group_stanza(&rec));
                    result
                        .clone()
                        .child(Stanza::new("groups").extend_children(groups))
                })
            }
            (Some("set"), "create") => {
                let subject = op.attr_value("subject").unwrap_or("");
                participants(op).and_then(|mut ms| {
                    ms.insert(0, device.to_user());
                    self.make_group(&me, subject, &ms, now_ms)
                        .map(|rec| result.clone().child(group_stanza(&rec)))
                })
            }
            (Some("set"), "add" | "remove") => {
                let gid = GroupId::parse_jid(to).map_err(|e| ControlError::BadRequest {
                    detail: e.to_string(),
                });
                gid.and_then(|g| {
                    let rec = self.group_record(g.as_str())?;
                    if !rec.has_member(&me) {
                        return Err(ControlError::NotMember);
                    }
                    let ms = participants(op)?;
                    if op.tag == "add" {
                        self.add_members(g.as_str(), &me, &ms, now_ms)?;
                    } else {
                        self.remove_members(g.as_str(), &me, &ms, now_ms)?;
                    }
                    Ok(result.clone().child(op.clone()))
                })
            }
            (Some("set"), "leave") => {
                let gid = op
                    .child_named("group")
                    .and_then(|g| g.attr_value("id"))
                    .unwrap_or("");
                self.remove_members(gid, &me, &[device.to_user()], now_ms)
                    .map(|_| result.clone())
            }
            _ => Err(ControlError::BadRequest {
                detail: "unknown w:g2 request".into(),
            }),
        };
        match answer {
            Ok(r) => r,
            Err(ControlError::UnknownGroup) => iq_error(id, 404, "item-not-found"),
            Err(ControlError::NotMember) => iq_error(id, 403, "forbidden"),
            Err(ControlError::UnknownUser) => iq_error(id, 404, "unknown_user"),
            Err(ControlError::BadRequest { .. }) | Err(ControlError::Exists) => {
                iq_error(id, 400, "bad_request")
            }
            Err(ControlError::Hub(e)) => {
                log::error!("hub: {e}");
                iq_error(id, 500, "internal")
            }
        }
    }
}
