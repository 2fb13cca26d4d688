//! The hub's connections: accept, login, frames in and out, idle timeouts, and the
//! stream-level refusals. Sans-I/O like the rest of [`Hub`].

use super::*;

impl Hub {
    /// A new connection at `now_ms`; it must log in within [`login::LOGIN_TIMEOUT_MS`].
    pub fn connect(&mut self, now_ms: u64) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                state: ConnState::Login(ServerLogin::new(now_ms)),
                last_rx_ms: now_ms,
            },
        );
        id
    }

    /// A `wa` connection whose handshake and token the shell checked (`server/wa.rs`): it is
    /// logged in at once, as an `interop-xml/1` login is after its `<auth>`.
    pub fn connect_verified(&mut self, v: login::Verified, now_ms: u64) -> ConnId {
        let id = self.connect(now_ms);
        self.logged_in(id, v, now_ms);
        id
    }

    /// The shell saw the connection end.
    pub fn disconnected(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn)
            && let ConnState::Ready { device } = c.state
        {
            let key = device.device_key();
            if self.online.get(&key) == Some(&conn) {
                self.online.remove(&key);
            }
        }
    }

    /// The shell's frame decoder failed on this connection (`reason` from
    /// [`interop_proto::frame::FrameError::reason`]).
    pub fn frame_error(&mut self, conn: ConnId, reason: &str) {
        self.close_with(conn, reason, "frame refused");
    }

    /// Closes every connection (`POST /connections/drop`). Returns how many.
    pub fn drop_connections(&mut self) -> usize {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in &ids {
            self.outputs.push_back(Output::Close { conn: *id });
            self.disconnected(*id);
        }
        ids.len()
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<u64> {
        let conn = self
            .conns
            .values()
            .map(|c| match &c.state {
                ConnState::Login(l) => l.deadline_ms(),
                ConnState::Ready { .. } => c.last_rx_ms.saturating_add(IDLE_TIMEOUT_MS),
            })
            .min();
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        match (conn, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs everything due at `now_ms`: login timeouts, idle closes, delayed receipts.
    pub fn handle_timeout<R: Rng + CryptoRng>(&mut self, now_ms: u64, rng: &mut R) {
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            match &c.state {
                ConnState::Login(l) if l.deadline_ms() <= now_ms => expired.push((*id, true)),
                ConnState::Ready { .. }
                    if c.last_rx_ms.saturating_add(IDLE_TIMEOUT_MS) <= now_ms =>
                {
                    expired.push((*id, false))
                }
                _ => {}
            }
        }
        for (id, in_login) in expired {
            if in_login {
                self.send(id, &login::failure_stanza(&LoginFailure::Timeout));
                self.outputs.push_back(Output::Close { conn: id });
                self.disconnected(id);
            } else {
                self.close_with(id, "idle_timeout", "no stanza for too long");
            }
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (due, seq) = *entry.key();
            let (from, stanza) = entry.remove();
            let _ = self.route(&from, &stanza, now_ms);
            if let Err(e) = self.store.remove_timer(due, seq) {
                log::error!("hub: delayed stanza ({due}, {seq}) not forgotten: {e}");
            }
        }
        self.drain_sims(now_ms, rng);
    }

    pub(super) fn send(&mut self, conn: ConnId, s: &Stanza) {
        self.outputs.push_back(Output::Send {
            conn,
            payload: s.to_xml(),
        });
    }

    pub(super) fn close_with(&mut self, conn: ConnId, code: &str, text: &str) {
        if self.conns.contains_key(&conn) {
            self.send(conn, &stream_error(code, text));
            self.outputs.push_back(Output::Close { conn });
            self.disconnected(conn);
        }
    }

    /// Handles one frame's payload from a connection.
    pub fn handle_frame<R: Rng + CryptoRng>(
        &mut self,
        conn: ConnId,
        payload: &[u8],
        now_ms: u64,
        rng: &mut R,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx_ms = now_ms;
        let s = match stanza::parse(payload) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("hub: connection {conn}: {e}");
                let text = e.to_string();
                self.close_with(conn, e.reason(), &text);
                return;
            }
        };
        match &mut c.state {
            ConnState::Login(l) => {
                let accounts = &self.accounts;
                let step = l.handle(
                    &s,
                    |name| accounts.lookup(name).map_err(|_| LoginFailure::Internal),
                    rng,
                );
                match step {
                    Ok(ServerStep::Send(out)) => self.send(conn, &out),
                    Ok(ServerStep::Verified(v)) => self.logged_in(conn, v, now_ms),
                    Err(f) => {
                        log::info!("hub: login on connection {conn} refused: {}", f.reason());
                        self.send(conn, &login::failure_stanza(&f));
                        self.outputs.push_back(Output::Close { conn });
                        self.disconnected(conn);
                    }
                }
            }
            ConnState::Ready { device } => {
                let device = device.clone();
                self.handle_ready(conn, &device, &s, now_ms, rng);
            }
        }
        self.drain_sims(now_ms, rng);
    }

    pub(super) fn logged_in(&mut self, conn: ConnId, v: login::Verified, now_ms: u64) {
        let device = v.hello.jid();
        let key = device.device_key();
        let old = match self.store.device(&key) {
            Ok(o) => o,
            Err(e) => {
                log::error!("hub: {e}");
                self.send(conn, &login::failure_stanza(&LoginFailure::Internal));
                self.outputs.push_back(Output::Close { conn });
                self.disconnected(conn);
                return;
            }
        };
        let enlisted = old.as_ref().is_none_or(|o| o.identity != v.identity);
        let mut new_device = old.is_none();
        if enlisted {
            let rec = DeviceRecord {
                registration_id: v.registration_id,
                identity: v.identity,
                signed_prekey: None,
                enlisted_ms: now_ms,
            };
            if let Err(e) = self.store.put_device(&key, &rec) {
                log::error!("hub: {e}");
                self.send(conn, &login::failure_stanza(&LoginFailure::Internal));
                self.outputs.push_back(Output::Close { conn });
                self.disconnected(conn);
                return;
            }
            self.low_notified.remove(&key);
        } else {
            new_device = false;
        }
        if let Some(prev) = self.online.insert(key.clone(), conn)
            && prev != conn
        {
            self.close_with(
                prev,
                "replaced",
                "another connection logged in as this device",
            );
            self.online.insert(key.clone(), conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Ready {
                device: device.clone(),
            };
        }
        self.stats.logins += 1;
        log::info!("hub: {device} logged in (enlisted: {enlisted})");
        self.send(
            conn,
            &login::success_stanza(&device, now_ms / 1000, enlisted),
        );
        if enlisted && !new_device {
            self.identity_changed(&device, now_ms);
        } else if new_device {
            self.devices_changed(&device.to_user(), now_ms);
        }
        match self.store.queued(&key) {
            Ok(q) => {
                for item in q {
                    self.outputs.push_back(Output::Send {
                        conn,
                        payload: item.xml,
                    });
                }
            }
            Err(e) => log::error!("hub: {e}"),
        }
    }

    pub(super) fn handle_ready<R: Rng + CryptoRng>(
        &mut self,
        conn: ConnId,
        device: &Jid,
        s: &Stanza,
        now_ms: u64,
        rng: &mut R,
    ) {
        match s.tag.as_str() {
            "iq" => {
                let reply = self.handle_iq(device, s, now_ms, rng);
                self.send(conn, &reply);
            }
            "message" | "receipt" => {
                let class = s.tag.clone();
                let ack = match self.route(device, s, now_ms) {
                    Ok(super::routing::Routed { to, phash }) => {
                        let mut a = Stanza::new("ack")
                            .attr("class", class)
                            .attr("id", s.attr_value("id").unwrap_or(""))
                            .attr("to", to)
                            .attr("t", unix_secs(now_ms));
                        if let Some(t) = s.attr_value("type").filter(|_| s.tag == "receipt") {
                            a = a.attr("type", t);
                        }
                        if let Some(phash) = phash {
                            a = a.attr("phash", phash);
                        }
                        a
                    }
                    Err(r) => Stanza::new("ack")
                        .attr("class", class)
                        .attr("id", s.attr_value("id").unwrap_or(""))
                        .attr("t", unix_secs(now_ms))
                        .attr("error", r.code())
                        .attr("text", r.text()),
                };
                self.send(conn, &ack);
            }
            "ack" => {
                let class = s.attr_value("class").unwrap_or("");
                let id = s.attr_value("id").unwrap_or("");
                let kind = s.attr_value("type").unwrap_or("");
                let kind = if class == "receipt" { kind } else { "" };
                if let Err(e) = self
                    .store
                    .ack(&device.device_key(), &ack_key(class, id, kind))
                {
                    log::error!("hub: {e}");
                }
            }
            "chatstate" => {
                let _ = self.route(device, s, now_ms);
            }
            other => {
                let text = format!("unknown stanza <{other}>");
                self.close_with(conn, "unknown_stanza", &text);
            }
        }
    }
}
