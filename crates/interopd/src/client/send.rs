//! The sending half of the [`Client`]: a send's device list, bundles for devices without a
//! session, encryption per device, and the stanza committed with the sessions before the wire.

use super::*;

impl Client {
    /// A send's device list is known: fetches bundles for devices without a session, or
    /// encrypts at once.
    pub(super) fn with_devices(
        &mut self,
        send: String,
        devices: Vec<u32>,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        if devices.is_empty() {
            // Let the server judge the recipient: a message with no devices still gets its
            // ack (unknown_user, not_opted_in) rather than silence.
            return self.finish_send(&send, now_ms);
        }
        let Some(msg) = self.sends.get_mut(&send) else {
            return Ok(());
        };
        msg.devices = devices.clone();
        let to = msg.to.clone();
        let txn = self.store.begin()?;
        let mut missing = Vec::new();
        for d in devices {
            let target = to.with_device(d);
            if !signal::has_session(&txn, &target.address())? {
                missing.push(target);
            }
        }
        drop(txn);
        if missing.is_empty() {
            return self.finish_send(&send, now_ms);
        }
        self.ask_bundles(Pending::Keys { send }, &missing, now_ms);
        Ok(())
    }

    /// Asks the server for the bundles of `devices` (`<iq xmlns="encrypt"><key>`); the
    /// answer is handled as `pending` says.
    pub(super) fn ask_bundles(&mut self, pending: Pending, devices: &[Jid], now_ms: u64) {
        let q = self.iq_id(pending);
        let key = Stanza::new("key").extend_children(
            devices
                .iter()
                .map(|j| Stanza::new("user").attr("jid", j.to_string())),
        );
        let s = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "encrypt")
            .child(key);
        self.push(&s, now_ms);
    }

    /// Starts a send: from the cached device list when it is younger than
    /// [`DEVICE_LIST_MAX_AGE_MS`], else by asking the server.
    pub(super) fn start_send(
        &mut self,
        send: String,
        to: &Jid,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        let cached = txn.device_list(&to.user)?;
        drop(txn);
        if let Some(list) = cached
            && !list.devices.is_empty()
            && now_ms.saturating_sub(list.fetched_ms) < DEVICE_LIST_MAX_AGE_MS
        {
            return self.with_devices(send, list.devices, now_ms);
        }
        let q = self.iq_id(Pending::Devices { send });
        let s = Stanza::new("iq")
            .attr("id", q)
            .attr("type", "get")
            .attr("xmlns", "devices")
            .child(Stanza::new("user").attr("jid", to.to_user().to_string()));
        self.push(&s, now_ms);
        Ok(())
    }

    /// Forgets `user`'s cached device list (a devices or identity notification).
    pub(super) fn forget_devices(&self, user: &str) -> Result<(), ClientError> {
        let txn = self.store.begin()?;
        txn.forget_device_list(user)?;
        txn.commit()?;
        Ok(())
    }

    /// Encrypts a pending send for every device that has a session and sends it.
    pub(super) fn finish_send(&mut self, send: &str, now_ms: u64) -> Result<(), ClientError> {
        let Some(msg) = self.sends.remove(send) else {
            return Ok(());
        };
        let txn = self.store.begin()?;
        let mut participants = Stanza::new("participants");
        let mut any = false;
        for d in &msg.devices {
            let target = msg.to.with_device(*d);
            match signal::encrypt(&txn, &target.address(), &msg.padded, now_ms) {
                Ok(ct) => {
                    let mut enc = Stanza::new("enc")
                        .attr("v", "2")
                        .attr("type", ct.kind.as_str());
                    if let Some(mt) = crate::content::media_type(msg.kind) {
                        enc = enc.attr("mediatype", mt);
                    }
                    participants = participants.child(
                        Stanza::new("to")
                            .attr("jid", target.to_string())
                            .child(enc.bytes(ct.body)),
                    );
                    any = true;
                }
                Err(SignalError::NoSession { .. }) => {}
                Err(SignalError::UntrustedIdentity { .. }) => {
                    drop(txn);
                    self.events.push_back(Event::SendHeld {
                        id: send.to_owned(),
                        user: msg.to.clone(),
                    });
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut m = Stanza::new("message")
            .attr("id", send)
            .attr("to", msg.to.to_string())
            .attr("type", crate::content::stanza_type(msg.kind))
            .attr("t", (now_ms / 1000).to_string());
        if let Some(edit) = crate::content::stanza_edit(msg.kind) {
            m = m.attr("edit", edit);
        }
        if any {
            m = m.child(participants);
        } else if !msg.devices.is_empty() {
            drop(txn);
            self.events.push_back(Event::SendFailed {
                id: send.to_owned(),
                reason: "no session with any device".into(),
                code: "no_devices",
            });
            return Ok(());
        }
        let bytes = m.to_xml();
        if msg.from_outbox
            && let Some((seq, mut row)) = txn.outbox_by_id(send)?
        {
            row.stanza = bytes.clone();
            txn.outbox_write(seq, &row)?;
        }
        // Sessions and stanza bytes commit together, before the bytes reach the wire.
        txn.commit()?;
        self.send_committed(bytes, now_ms);
        Ok(())
    }
}
