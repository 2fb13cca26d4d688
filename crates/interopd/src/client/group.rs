//! Group messages in the [`Client`] (docs/protocol.md section 21): sending one outbox row to
//! a group with our sender key, receiving a member's group message, and the per-device
//! receipts that add up to the row's status. Group state (create, members, notifications)
//! is `group_state.rs`.
//!
//! Sending a row to `{id}@g.us`:
//!
//! ```text
//!  send_group_outbox ─▶ (stale lists) iq devices ─▶ (new key holders without a session)
//!    our copy of the group             iq encrypt/key ─▶ finish_group_send: SKDM to each
//!                                                        device that lacks it (pairwise),
//!                                                        one skmsg, phash, commit, wire
//! ```
//!
//! The commit holds the stanza bytes, the advanced pairwise sessions and our chain, the new
//! key holders and the list of addressed devices (`group_receipts`), so a crash resends
//! the same bytes and no member is counted twice.

use std::collections::HashSet;

use super::*;
use crate::group::{self, GroupId, InboundGroupMessage, OutgoingGroupMessage};
use crate::store::DeviceReceipt;

/// Most users one `<iq xmlns="devices">` asks about (the gatekeeper's bound).
pub const GROUP_DEVICE_QUERY_USERS: usize = 64;
/// Most devices one `<iq xmlns="encrypt"><key>` asks bundles for.
pub const GROUP_KEY_QUERY_DEVICES: usize = 64;

/// A group send waiting for device lists or bundles.
pub(super) struct GroupSend {
    group: GroupId,
    padded: Vec<u8>,
    kind: content::ContentKind,
    /// Member devices known so far (never ours).
    devices: Vec<Jid>,
    /// Device list or bundle requests still unanswered.
    waiting: usize,
}

impl Client {
    /// Our sending address in every group.
    fn own_address(&self) -> signal::Address {
        self.hello.jid().address()
    }

    /// Starts sending outbox row `row` to group `gid`.
    pub(super) fn send_group_outbox<R: Rng + CryptoRng>(
        &mut self,
        row: &OutboxRow,
        gid: GroupId,
        message: &Message,
        padded: Vec<u8>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let Some(g) = txn.group(gid.as_str())? else {
            drop(txn);
            self.events.push_back(Event::SendFailed {
                id: row.id.clone(),
                reason: format!("we are not in group {gid}"),
                code: "unknown_group",
            });
            return Ok(());
        };
        let me = self.hello.jid().to_user().to_string();
        let mut devices = Vec::new();
        let mut stale = Vec::new();
        for m in g.members.iter().filter(|m| m.jid != me) {
            let Ok(user) = Jid::parse(&m.jid) else {
                log::warn!(
                    "client: group {gid} member {:?} is not a JID; skipped",
                    m.jid
                );
                continue;
            };
            match txn.device_list(&user.user)? {
                Some(list)
                    if !list.devices.is_empty()
                        && now_ms.saturating_sub(list.fetched_ms) < DEVICE_LIST_MAX_AGE_MS =>
                {
                    devices.extend(list.devices.iter().map(|d| user.with_device(*d)));
                }
                _ => stale.push(user.to_user()),
            }
        }
        drop(txn);
        let waiting = stale.len().div_ceil(GROUP_DEVICE_QUERY_USERS);
        self.group_sends.insert(
            row.id.clone(),
            GroupSend {
                group: gid,
                padded,
                kind: message.kind(),
                devices,
                waiting,
            },
        );
        if waiting == 0 {
            return self.group_with_devices(&row.id, now_ms, rng);
        }
        for chunk in stale.chunks(GROUP_DEVICE_QUERY_USERS) {
            let q = self.iq_id(Pending::GroupDevices {
                send: row.id.clone(),
            });
            let s = Stanza::new("iq")
                .attr("id", q)
                .attr("type", "get")
                .attr("xmlns", "devices")
                .extend_children(
                    chunk
                        .iter()
                        .map(|u| Stanza::new("user").attr("jid", u.to_string())),
                );
            self.push(&s, now_ms);
        }
        Ok(())
    }

    /// An answer to a group send's device list request: records each user's list.
    pub(super) fn group_devices_answer<R: Rng + CryptoRng>(
        &mut self,
        send: String,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let mut found = Vec::new();
        let txn = self.store.begin()?;
        for u in s.children_named("user") {
            let Some(user) = device_jid_of(u, "jid").map(|j| j.to_user()) else {
                continue;
            };
            let ids: Vec<u32> = u
                .children_named("device")
                .filter_map(|d| d.attr_value("id")?.parse().ok())
                .take(crate::store::MAX_DEVICES_PER_USER)
                .collect();
            if ids.is_empty() {
                continue;
            }
            txn.put_device_list(
                &user.user,
                &crate::store::DeviceList {
                    fetched_ms: now_ms,
                    devices: ids.clone(),
                },
            )?;
            found.extend(ids.into_iter().map(|d| user.with_device(d)));
        }
        txn.commit()?;
        let Some(send_state) = self.group_sends.get_mut(&send) else {
            return Ok(());
        };
        send_state.devices.extend(found);
        send_state.waiting = send_state.waiting.saturating_sub(1);
        if send_state.waiting == 0 {
            return self.group_with_devices(&send, now_ms, rng);
        }
        Ok(())
    }

    /// Every member device is known: fetches bundles for the devices that need our key
    /// and have no session, or finishes at once.
    fn group_with_devices<R: Rng + CryptoRng>(
        &mut self,
        send: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Some(gs) = self.group_sends.get(send) else {
            return Ok(());
        };
        let txn = self.store.begin()?;
        let holders: HashSet<String> = self.key_holders(&txn, &gs.group)?.into_iter().collect();
        let mut missing = Vec::new();
        for d in gs
            .devices
            .iter()
            .filter(|d| !holders.contains(&d.to_string()))
        {
            if !signal::has_session(&txn, &d.address())? {
                missing.push(d.clone());
            }
        }
        drop(txn);
        if missing.is_empty() {
            return self.finish_group_send(send, now_ms, rng);
        }
        let chunks = missing.chunks(GROUP_KEY_QUERY_DEVICES);
        if let Some(gs) = self.group_sends.get_mut(send) {
            gs.waiting = chunks.len();
        }
        for chunk in chunks {
            let pending = Pending::GroupKeys {
                send: send.to_owned(),
            };
            self.ask_bundles(pending, chunk, now_ms);
        }
        Ok(())
    }

    /// An answer to a group send's bundle request.
    pub(super) fn group_keys_answer<R: Rng + CryptoRng>(
        &mut self,
        send: String,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        if let Some(user) = self.process_bundles(s, now_ms, rng)? {
            self.group_sends.remove(&send);
            self.events.push_back(Event::SendHeld { id: send, user });
            return Ok(());
        }
        let Some(gs) = self.group_sends.get_mut(&send) else {
            return Ok(());
        };
        gs.waiting = gs.waiting.saturating_sub(1);
        if gs.waiting == 0 {
            return self.finish_group_send(&send, now_ms, rng);
        }
        Ok(())
    }

    /// The member devices that hold our current chain for `group` (none when we have no
    /// chain yet, or after a rotation).
    fn key_holders(&self, txn: &Txn, group: &GroupId) -> Result<Vec<String>, ClientError> {
        if !signal::has_sender_key(txn, group.as_str(), &self.own_address())? {
            return Ok(Vec::new());
        }
        Ok(txn
            .group(group.as_str())?
            .map(|g| g.key_holders)
            .unwrap_or_default())
    }

    /// Encrypts a group send: our SKDM pairwise to each device that lacks it, the content
    /// once with our chain; commits, then queues the stanza.
    fn finish_group_send<R: Rng + CryptoRng>(
        &mut self,
        send: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let Some(gs) = self.group_sends.remove(send) else {
            return Ok(());
        };
        let own = self.own_address();
        let gid = gs.group.as_str().to_owned();
        let txn = self.store.begin()?;
        // Read before the SKDM below makes our chain, which would count every old holder in.
        let mut holders = self.key_holders(&txn, &gs.group)?;
        let held: HashSet<String> = holders.iter().cloned().collect();
        let skdm = signal::sender_key_distribution(&txn, &gid, &own, rng)?;
        let handover =
            content::encode_padded(&Message::sender_key_distribution(gid.clone(), skdm), rng)
                .map_err(ClientError::Content)?;
        let mut addressed = Vec::new();
        let mut distributions = Vec::new();
        for d in &gs.devices {
            let name = d.to_string();
            if held.contains(&name) {
                addressed.push(name);
                continue;
            }
            match signal::encrypt(&txn, &d.address(), &handover, now_ms) {
                Ok(ct) => {
                    distributions.push((d.clone(), ct));
                    holders.push(name.clone());
                    addressed.push(name);
                }
                Err(SignalError::NoSession { .. }) => {
                    log::warn!(
                        "client: group {gid}: no session with {d}; it misses message {send}"
                    );
                }
                Err(SignalError::UntrustedIdentity { .. }) => {
                    drop(txn);
                    self.events.push_back(Event::SendHeld {
                        id: send.to_owned(),
                        user: d.to_user(),
                    });
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if addressed.len() > crate::store::MAX_GROUP_DEVICES {
            drop(txn);
            self.events.push_back(Event::SendFailed {
                id: send.to_owned(),
                reason: format!(
                    "{} member devices, over the bound of {}",
                    addressed.len(),
                    crate::store::MAX_GROUP_DEVICES
                ),
                code: "too_many_devices",
            });
            return Ok(());
        }
        let skmsg = signal::group_encrypt(&txn, &gid, &own, &gs.padded, rng)?;
        let out = OutgoingGroupMessage {
            id: send.to_owned(),
            group: gs.group.clone(),
            kind: content::stanza_type(gs.kind).to_owned(),
            t_secs: now_ms / 1000,
            mediatype: content::media_type(gs.kind).map(str::to_owned),
            skmsg,
            distributions,
            phash: group::phash(&addressed),
        };
        let bytes = out.to_stanza().to_xml();
        if let Some((seq, mut row)) = txn.outbox_by_id(send)? {
            row.stanza = bytes.clone();
            txn.outbox_write(seq, &row)?;
        }
        if let Some(mut g) = txn.group(&gid)? {
            g.key_holders = holders;
            g.updated_ms = now_ms;
            txn.put_group(&gid, &g)?;
        }
        let receipts: Vec<(String, DeviceReceipt)> = addressed
            .into_iter()
            .map(|d| (d, DeviceReceipt::Sent))
            .collect();
        txn.put_group_receipts(send, &receipts)?;
        // Sessions, our chain, key holders and stanza bytes commit together, before the wire.
        txn.commit()?;
        if self.group_phashes.len() < MAX_PENDING_SENDS {
            self.group_phashes
                .insert(send.to_owned(), (gs.group.clone(), out.phash.clone()));
        }
        self.send_committed(bytes, now_ms);
        Ok(())
    }

    /// The gatekeeper acked group message `id` with its own participant-list hash. When it
    /// differs from ours, some member's device list is stale (a new device, or one gone):
    /// every member's cached list is forgotten, so the next send fetches them afresh.
    pub(super) fn group_acked(&mut self, id: &str, theirs: &str) -> Result<(), ClientError> {
        let Some((group, ours)) = self.group_phashes.remove(id) else {
            return Ok(());
        };
        if ours == theirs {
            return Ok(());
        }
        log::warn!(
            "client: group {group}: the gatekeeper addresses other devices than message {id} did (phash {ours}, theirs {theirs}); device lists are fetched again for the next send"
        );
        let txn = self.store.begin()?;
        if let Some(g) = txn.group(group.as_str())? {
            for m in g.members {
                if let Ok(j) = Jid::parse(&m.jid) {
                    txn.forget_device_list(&j.user)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A `<receipt from="{id}@g.us" participant="{device}">` for a group message we sent:
    /// records that device's progress, and reports the row delivered (or read) once every
    /// addressed device got that far.
    pub(super) fn group_receipt(
        &mut self,
        s: &Stanza,
        id: &str,
        kind: Option<&str>,
    ) -> Result<(), ClientError> {
        let state = match kind {
            None => DeviceReceipt::Delivered,
            Some("read") => DeviceReceipt::Read,
            _ => return Ok(()),
        };
        let Some(device) = device_jid_of(s, "participant") else {
            return Ok(());
        };
        let name = device.to_string();
        let txn = self.store.begin()?;
        let Some(mut devices) = txn.group_receipts(id)? else {
            return Ok(());
        };
        let Some(entry) = devices.iter_mut().find(|(d, _)| *d == name) else {
            log::debug!("client: receipt for {id} from {name}, which it was not sent to");
            return Ok(());
        };
        if entry.1 >= state {
            return Ok(());
        }
        entry.1 = state;
        let all = devices.iter().map(|(_, s)| *s).min().unwrap_or(state);
        txn.put_group_receipts(id, &devices)?;
        txn.commit()?;
        let reached = match all {
            DeviceReceipt::Sent => return Ok(()),
            DeviceReceipt::Delivered => None,
            DeviceReceipt::Read => Some("read".to_owned()),
        };
        self.events.push_back(Event::Receipt {
            id: id.to_owned(),
            from: device,
            kind: reached,
        });
        Ok(())
    }

    /// A member's group message: its pairwise part (our copy of its sender key) first, if
    /// any, then the `skmsg`; one commit, then the ack and the delivery receipt.
    pub(super) fn handle_group_message<R: Rng + CryptoRng>(
        &mut self,
        m: InboundGroupMessage,
        t_secs: u64,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(), ClientError> {
        let gid = m.group.as_str().to_owned();
        let from = m.participant.clone();
        let ack = Stanza::new("ack")
            .attr("class", "message")
            .attr("id", m.id.clone())
            .attr("to", m.group.jid())
            .attr("participant", from.to_string());
        let failed = |c: &mut Client, reason: String| {
            c.push(&ack, now_ms);
            c.events.push_back(Event::DecryptFailed {
                id: m.id.clone(),
                from: from.clone(),
                reason,
            });
        };
        let txn = self.store.begin()?;
        let mut identity = IdentityEvent::Unchanged;
        if let Some(ct) = &m.pairwise {
            match signal::decrypt(&txn, &from.address(), ct, rng, now_ms) {
                Ok(p) => {
                    identity = p.identity;
                    let skdm = content::decode_padded(&p.plaintext).ok().and_then(|msg| {
                        let d = msg.sender_key_distribution_message?;
                        (d.group_id.as_deref() == Some(gid.as_str()))
                            .then_some(d.axolotl_sender_key_distribution_message)?
                    });
                    match skdm {
                        Some(skdm) => signal::process_sender_key_distribution(
                            &txn,
                            &gid,
                            &from.address(),
                            &skdm,
                        )?,
                        None => log::warn!(
                            "client: group message {} from {from} carried no sender key for {gid}",
                            m.id
                        ),
                    }
                }
                // Opened before: its sender key is already ours.
                Err(SignalError::Duplicate) => {}
                Err(e) => {
                    drop(txn);
                    failed(self, e.to_string());
                    return Ok(());
                }
            }
        }
        let plain = match signal::group_decrypt(&txn, &gid, &from.address(), &m.skmsg) {
            Ok(p) => p,
            Err(SignalError::Duplicate) => {
                log::info!(
                    "client: group message {} from {from} was stored before; acked again",
                    m.id
                );
                self.push(&ack, now_ms);
                return Ok(());
            }
            Err(e) => {
                drop(txn);
                failed(self, e.to_string());
                return Ok(());
            }
        };
        let message = match content::decode_padded(&plain) {
            Ok(msg) => msg,
            Err(e) => {
                drop(txn);
                failed(self, e.to_string());
                return Ok(());
            }
        };
        let receipt = Stanza::new("receipt")
            .attr("id", m.id.clone())
            .attr("to", m.group.jid())
            .attr("participant", from.to_string());
        let arrived = Arrived {
            id: m.id.clone(),
            from: from.clone(),
            group: gid,
            t_secs,
            message,
            identity,
        };
        self.store_arrived(txn, arrived, ack, receipt, now_ms)
    }
}
