//! Routing between devices: messages and receipts to every device of the recipient, offline
//! queues with their acks, and notifications (identity and device changes) to contacts.

use super::*;

/// What the ack of a routed stanza names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Routed {
    /// The recipient: a user JID, or a group's.
    pub to: String,
    /// For a group message: the participant-list hash over the devices it went to, which the
    /// ack carries (docs/protocol.md 21.6).
    pub phash: Option<String>,
}

impl From<String> for Routed {
    fn from(to: String) -> Routed {
        Routed { to, phash: None }
    }
}

impl Hub {
    /// Routes a `<message>`, `<receipt>` or `<chatstate>` from `from` (a device). Returns what
    /// the ack names.
    pub(super) fn route(&mut self, from: &Jid, s: &Stanza, now_ms: u64) -> Result<Routed, Refusal> {
        if s.attr_value("to")
            .is_some_and(interop_proto::group::is_group_jid)
        {
            return match s.tag.as_str() {
                "message" => self.route_group_message(from, s, now_ms),
                "receipt" => self.route_group_receipt(from, s, now_ms).map(Routed::from),
                _ => Err(Refusal::BadRequest),
            };
        }
        let to = s
            .attr_value("to")
            .and_then(|t| Jid::parse(t).ok())
            .ok_or(Refusal::BadRequest)?;
        match s.tag.as_str() {
            "message" => self.route_message(from, &to, s, now_ms).map(Routed::from),
            "receipt" => self.route_receipt(from, &to, s, now_ms).map(Routed::from),
            "chatstate" => {
                let state = s.children().first().ok_or(Refusal::BadRequest)?;
                if !matches!(state.tag.as_str(), "composing" | "paused") {
                    return Err(Refusal::BadRequest);
                }
                let out = Stanza::new("chatstate")
                    .attr("from", from.to_string())
                    .attr("to", to.to_user().to_string())
                    .child(Stanza::new(state.tag.clone()));
                for d in self.store.devices_of(&to.user)? {
                    let key = to.with_device(d).device_key();
                    if let Some(conn) = self.online.get(&key).copied() {
                        self.send(conn, &out);
                    }
                }
                Ok(to.to_string().into())
            }
            _ => Err(Refusal::BadRequest),
        }
    }

    pub(super) fn check_recipient(&self, to: &Jid) -> Result<(), Refusal> {
        match to.server {
            Server::WhatsApp => match self.sims.users.get(&to.user) {
                None => Err(Refusal::UnknownUser),
                Some(u) if u.behavior == Behavior::NotOptedIn => Err(Refusal::NotOptedIn),
                Some(_) => Ok(()),
            },
            Server::Interop => {
                if self.store.devices_of(&to.user)?.is_empty() {
                    Err(Refusal::UnknownUser)
                } else {
                    Ok(())
                }
            }
        }
    }

    pub(super) fn route_message(
        &mut self,
        from: &Jid,
        to: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<String, Refusal> {
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        content::MessageId::parse(id).map_err(|_| Refusal::BadRequest)?;
        let kind = s.attr_value("type").ok_or(Refusal::BadRequest)?;
        if !matches!(kind, "text" | "media" | "reaction") || to.device.is_some() {
            return Err(Refusal::BadRequest);
        }
        self.check_recipient(to)?;
        let participants = s.child_named("participants").ok_or(Refusal::BadRequest)?;
        let tos: Vec<&Stanza> = participants.children_named("to").collect();
        if tos.is_empty() || tos.len() > MAX_PARTICIPANTS {
            return Err(Refusal::BadRequest);
        }
        let to_devices = self.store.devices_of(&to.user)?;
        let own_devices = self.store.devices_of(&from.user)?;
        let mut deliveries = Vec::with_capacity(tos.len());
        for t in tos {
            let target = t
                .attr_value("jid")
                .and_then(|j| Jid::parse(j).ok())
                .ok_or(Refusal::BadRequest)?;
            let dev = target.device.ok_or(Refusal::BadRequest)?;
            let known = (target.to_user() == to.to_user() && to_devices.contains(&dev))
                || (target.to_user() == from.to_user()
                    && target != *from
                    && own_devices.contains(&dev));
            if !known {
                return Err(Refusal::UnknownDevice);
            }
            let enc = t.child_named("enc").ok_or(Refusal::BadRequest)?;
            if enc.payload().is_none()
                || !matches!(enc.attr_value("type"), Some("pkmsg" | "msg"))
                || enc.attr_value("v") != Some("2")
            {
                return Err(Refusal::BadRequest);
            }
            let mut out = Stanza::new("message")
                .attr("id", id)
                .attr("from", from.to_string())
                .attr("to", to.to_string())
                .attr("type", kind)
                .attr("t", unix_secs(now_ms));
            if let Some(count) = s.attr_value("count") {
                out = out.attr("count", count);
            }
            deliveries.push((target, out.child(enc.clone())));
        }
        for (target, out) in deliveries {
            self.deliver(&target, out, &ack_key("message", id, ""))?;
        }
        self.stats.stanzas_routed += 1;
        if s.attr_value("count").is_some() {
            self.stats.resends_routed += 1;
        }
        if let Err(e) = self
            .store
            .add_contact(&from.to_user().to_string(), &to.to_string())
        {
            log::error!("hub: {e}");
        }
        Ok(to.to_string())
    }

    pub(super) fn route_receipt(
        &mut self,
        from: &Jid,
        to: &Jid,
        s: &Stanza,
        now_ms: u64,
    ) -> Result<String, Refusal> {
        let id = s.attr_value("id").ok_or(Refusal::BadRequest)?;
        content::MessageId::parse(id).map_err(|_| Refusal::BadRequest)?;
        let kind = s.attr_value("type").unwrap_or("");
        if !matches!(kind, "" | "read" | "retry") {
            return Err(Refusal::BadRequest);
        }
        let devices = match to.device {
            Some(d) => vec![d],
            None => self.store.devices_of(&to.user)?,
        };
        if devices.is_empty() && to.server == Server::Interop {
            return Err(Refusal::UnknownUser);
        }
        let mut out = Stanza::new("receipt")
            .attr("id", id)
            .attr("from", from.to_string())
            .attr("to", to.to_user().to_string())
            .attr("t", unix_secs(now_ms));
        if !kind.is_empty() {
            out = out.attr("type", kind);
        }
        out.content = s.content.clone();
        for d in devices {
            self.deliver(
                &to.with_device(d),
                out.clone(),
                &ack_key("receipt", id, kind),
            )?;
        }
        self.stats.stanzas_routed += 1;
        if kind == "retry" {
            self.stats.retry_receipts_routed += 1;
        }
        Ok(to.to_string())
    }

    /// Puts a stanza on its way to one device: queued (and sent if online) for ours,
    /// handed to the simulated user for theirs (queued while it is offline).
    pub(super) fn deliver(&mut self, device: &Jid, s: Stanza, ack: &str) -> Result<(), Refusal> {
        let key = device.device_key();
        if device.server == Server::WhatsApp {
            let offline = match self.sims.users.get(&device.user) {
                Some(u) => u.behavior == Behavior::Offline,
                None => return Ok(()),
            };
            if !offline {
                self.sim_inbox.push_back((device.clone(), s));
                return Ok(());
            }
        }
        let xml = s.to_xml();
        self.store
            .enqueue(&key, ack, &xml)?
            .ok_or(Refusal::QueueFull)?;
        if let Some(conn) = self.online.get(&key).copied() {
            self.outputs.push_back(Output::Send { conn, payload: xml });
        }
        Ok(())
    }

    pub(super) fn notify(&mut self, device: &Jid, n: Stanza, now_ms: u64) {
        let id = match self.store.next_counter("notification_seq") {
            Ok(n) => format!("{n:016X}"),
            Err(e) => {
                log::error!("hub: {e}");
                return;
            }
        };
        let mut n = n;
        n.attrs.insert(0, ("id".into(), id.clone()));
        n = n.attr("t", unix_secs(now_ms));
        if let Err(r) = self.deliver(device, n, &ack_key("notification", &id, "")) {
            log::warn!("hub: notification to {device} dropped: {}", r.code());
        }
    }

    /// Tells every contact of `user`'s device that its identity changed, and makes the
    /// simulated users forget their sessions with it.
    pub(super) fn identity_changed(&mut self, device: &Jid, now_ms: u64) {
        let user = device.to_user();
        for u in self.sims.users.values_mut() {
            if let Err(e) = u.forget_device(device) {
                log::error!("hub: {e}");
            }
        }
        let n = Stanza::new("notification")
            .attr("type", "identity")
            .attr("from", user.to_string());
        self.notify_contacts(&user, n, now_ms);
    }

    pub(super) fn devices_changed(&mut self, user: &Jid, now_ms: u64) {
        let devices = self.store.devices_of(&user.user).unwrap_or_default();
        let n = Stanza::new("notification")
            .attr("type", "devices")
            .attr("from", user.to_string())
            .extend_children(
                devices
                    .into_iter()
                    .map(|d| Stanza::new("device").attr("id", d.to_string())),
            );
        self.notify_contacts(user, n, now_ms);
    }

    pub(super) fn notify_contacts(&mut self, user: &Jid, n: Stanza, now_ms: u64) {
        let contacts = self
            .store
            .contacts_of(&user.to_string())
            .unwrap_or_default();
        for c in contacts {
            let Ok(c) = Jid::parse(&c) else { continue };
            if c.server != Server::Interop {
                continue;
            }
            for d in self.store.devices_of(&c.user).unwrap_or_default() {
                self.notify(&c.with_device(d), n.clone(), now_ms);
            }
        }
    }
}
