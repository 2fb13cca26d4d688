//! A simulated user in groups: opening a group message (the sender's key from the pairwise
//! `<enc>` if one came, then the `skmsg`), recording it with its group, receipts naming the
//! sender device, the echo contact's `echo: <text>` in the group, and its own sender key:
//! made on its first group send, given to each member device once, rotated when a member is
//! removed.

use super::*;
use interop_proto::group::{self, GroupId, OutgoingGroupMessage};

/// Most (group, device) pairs a simulated user remembers having given its sender key to.
/// Past it the memory is cleared, and the key is simply given again with the next message.
pub const MAX_SENDER_KEYS_GIVEN: usize = 65_536;

impl SimUser {
    /// Handles a group `<message from="{group}" participant>` delivered to `device`.
    pub fn receive_group<R: Rng + CryptoRng>(
        &mut self,
        device: u32,
        stanza: &Stanza,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<SimAction>, SimError> {
        let Ok(Some(m)) = group::parse_inbound(stanza) else {
            log::warn!("simulated {}:{device}: malformed group message", self.phone);
            return Ok(Vec::new());
        };
        let Some(d) = self.devices.iter().find(|d| d.device == device) else {
            return Ok(Vec::new());
        };
        let sender = m.participant.address();
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        if let Some(ct) = &m.pairwise {
            match signal::decrypt(&txn, &sender, ct, rng, now_ms) {
                Ok(p) => {
                    let skdm = content::decode_padded(&p.plaintext)
                        .ok()
                        .and_then(|c| c.sender_key_distribution_message)
                        .filter(|s| s.group_id.as_deref() == Some(m.group.as_str()))
                        .and_then(|s| s.axolotl_sender_key_distribution_message);
                    if let Some(skdm) = skdm {
                        signal::process_sender_key_distribution(
                            &txn,
                            m.group.as_str(),
                            &sender,
                            &skdm,
                        )?;
                    }
                }
                Err(SignalError::Duplicate) => {}
                Err(e) => log::warn!(
                    "simulated {}:{device}: pairwise part of {} from {}: {e}",
                    self.phone,
                    m.id,
                    m.participant
                ),
            }
        }
        let plain = match signal::group_decrypt(&txn, m.group.as_str(), &sender, &m.skmsg) {
            Ok(p) => p,
            Err(SignalError::Duplicate) => return Ok(Vec::new()),
            Err(e) => {
                // Keep what the pairwise part taught us; the skmsg stays unread (recorded, so
                // the control API shows who could not decrypt).
                wtx.commit().map_err(StoreError::from)?;
                log::warn!(
                    "simulated {}:{device} cannot decrypt group message {}: {e}",
                    self.phone,
                    m.id
                );
                return Ok(vec![SimAction::Record {
                    phone: self.phone.clone(),
                    json: serde_json::json!({
                        "id": m.id, "from": m.participant.user, "group": m.group.as_str(),
                        "participant": m.participant.to_string(), "t": now_ms / 1000,
                        "kind": "undecryptable", "error": e.to_string(),
                    }),
                }]);
            }
        };
        wtx.commit().map_err(StoreError::from)?;
        let Ok(message) = content::decode_padded(&plain) else {
            log::warn!("simulated {}:{device}: bad group content", self.phone);
            return Ok(Vec::new());
        };
        if !self.first_time(&format!("{}|{}", m.group, m.id)) {
            return Ok(Vec::new());
        }
        let opened = Opened {
            id: m.id.clone(),
            from: m.participant.clone(),
            message,
        };
        // A provider's media is fetched through the proxy and recorded once checked, as in a
        // 1:1 chat; it is not echoed.
        let fetch = if opened.from.server == Server::Interop {
            media_ref(&opened.message).map(|r| PendingMedia {
                phone: self.phone.clone(),
                id: opened.id.clone(),
                from: opened.from.clone(),
                received_ms: now_ms,
                message: opened.message.clone(),
                url: r.url,
                echo: false,
                group: Some((m.group.as_str().to_owned(), m.participant.to_string())),
            })
        } else {
            None
        };
        let mut record = record_json(&opened, now_ms, &MediaOutcome::Declared);
        if let Some(obj) = record.as_object_mut() {
            obj.insert("group".into(), m.group.as_str().into());
            obj.insert("participant".into(), m.participant.to_string().into());
        }
        let me = Jid::whatsapp(self.phone.clone(), Some(device));
        let receipt = |read: bool| {
            let r = Stanza::new("receipt")
                .attr("id", m.id.clone())
                .attr("to", m.group.jid())
                .attr("participant", m.participant.to_string());
            if read { r.attr("type", "read") } else { r }
        };
        let mut out = vec![match fetch {
            Some(f) => SimAction::FetchMedia(Box::new(f)),
            None => SimAction::Record {
                phone: self.phone.clone(),
                json: record,
            },
        }];
        out.push(SimAction::Send {
            from: me.clone(),
            stanza: receipt(false),
        });
        match self.behavior {
            Behavior::Echo => out.push(SimAction::Send {
                from: me,
                stanza: receipt(true),
            }),
            Behavior::ReadAfter { secs } => out.push(SimAction::Later {
                at_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                from: me,
                stanza: receipt(true),
            }),
            Behavior::Silent | Behavior::NotOptedIn | Behavior::Offline => {}
        }
        // As in a 1:1 chat, an echo is never answered with an echo: two echo members would
        // answer each other for ever.
        if self.behavior == Behavior::Echo
            && answerable(&opened)
            && opened.message.kind() == ContentKind::Text
            && let Some(text) = opened.message.text_body()
        {
            let reply = Message::text(format!("{ECHO_PREFIX}{text}"));
            let stanza = self.encrypt_group_message(&m.group, &reply, dir, now_ms, rng)?;
            out.push(SimAction::Send {
                from: self.jid().with_device(0),
                stanza,
            });
        }
        Ok(out)
    }

    /// Encrypts `message` for group `group` from device 0: one `skmsg`, and our sender key,
    /// pairwise, to each member device that has not had it yet.
    pub fn encrypt_group_message<R: Rng + CryptoRng>(
        &mut self,
        group: &GroupId,
        message: &Message,
        dir: &mut dyn Directory,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Stanza, SimError> {
        let Some(d) = self.devices.first() else {
            return Err(SimError::NoDevices {
                to: self.phone.clone(),
            });
        };
        let own = Jid::whatsapp(self.phone.clone(), Some(d.device));
        let targets: Vec<Jid> = dir
            .group_devices(group)
            .into_iter()
            .filter(|t| *t != own)
            .collect();
        let padded = content::encode_padded(message, rng).map_err(SimError::Content)?;
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let id = content::message_id(now_ms / 1000, &self.phone, &random);
        let wtx = d.store.begin()?;
        let txn = SignalTables(&wtx);
        let skdm = signal::sender_key_distribution(&txn, group.as_str(), &own.address(), rng)?;
        let handover =
            content::encode_padded(&Message::sender_key_distribution(group.as_str(), skdm), rng)
                .map_err(SimError::Content)?;
        let mut distributions = Vec::new();
        let mut given = Vec::new();
        for target in &targets {
            let key = format!("{group}|{}", target.device_key());
            if self.sender_key_given.contains(&key) {
                continue;
            }
            let addr = target.address();
            if !signal::has_session(&txn, &addr)? {
                let Some(bundle) = dir.bundle(target) else {
                    continue;
                };
                if let Err(e) = signal::process_bundle(&txn, &addr, &bundle, rng, now_ms) {
                    log::warn!("simulated {} refuses bundle of {target}: {e}", self.phone);
                    continue;
                }
            }
            distributions.push((
                target.clone(),
                signal::encrypt(&txn, &addr, &handover, now_ms)?,
            ));
            given.push(key);
        }
        let skmsg = signal::group_encrypt(&txn, group.as_str(), &own.address(), &padded, rng)?;
        wtx.commit().map_err(StoreError::from)?;
        if self.sender_key_given.len() + given.len() > MAX_SENDER_KEYS_GIVEN {
            self.sender_key_given.clear();
        }
        self.sender_key_given.extend(given);
        let names: Vec<String> = targets.iter().map(Jid::to_string).collect();
        Ok(OutgoingGroupMessage {
            id: id.as_str().to_owned(),
            group: group.clone(),
            kind: stanza_type(message.kind()).to_owned(),
            t_secs: now_ms / 1000,
            mediatype: media_type(message.kind()).map(str::to_owned),
            skmsg,
            distributions,
            phash: group::phash(&names),
        }
        .to_stanza())
    }

    /// Forgets this user's sender key in `group`, so its next group message starts a new
    /// chain, given afresh to the members left (a member was removed).
    pub fn rotate_sender_key(&mut self, group: &GroupId) -> Result<(), SimError> {
        let prefix = format!("{group}|");
        self.sender_key_given.retain(|k| !k.starts_with(&prefix));
        for d in &self.devices {
            let wtx = d.store.begin()?;
            let own = Jid::whatsapp(self.phone.clone(), Some(d.device)).address();
            signal::forget_sender_key(&SignalTables(&wtx), group.as_str(), &own)?;
            wtx.commit().map_err(StoreError::from)?;
        }
        Ok(())
    }
}
