//! Groups we are a member of (`groups`), and the per-device delivery state of each group
//! message we sent (`group_receipts`). The gatekeeper owns a group's membership: a row here
//! is our copy, rewritten from its answers and its `w:gp2` notifications, plus one thing
//! only we know, the member devices that already hold our current sender key. Row layouts:
//! docs/store.md.

use super::*;

/// Row version of a `groups` value.
pub const GROUP_ROW_VERSION: u8 = 1;
/// Row version of a `group_receipts` value.
pub const GROUP_RECEIPT_ROW_VERSION: u8 = 1;
/// Most member devices one group message is addressed to (and so most key holders and
/// receipt entries kept for one group or message): 1,024 members of up to 8 devices each.
pub const MAX_GROUP_DEVICES: usize = 8 * crate::group::MAX_GROUP_MEMBERS;
/// Longest JID kept in a group row, in bytes.
pub const MAX_GROUP_JID_BYTES: usize = 128;

/// One member of a group, as the gatekeeper lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's user JID (`15550100@s.whatsapp.net`, `acme-home@interop`).
    pub jid: String,
    pub admin: bool,
}

/// Our copy of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRow {
    pub subject: String,
    /// The creator's user JID (empty when the gatekeeper did not say).
    pub creator: String,
    /// Creation time, in Unix seconds.
    pub created_secs: u64,
    pub members: Vec<GroupMember>,
    /// Member device JIDs that hold our current sender key for this group. Cleared when a
    /// member leaves, so that the next send starts a new chain for the rest.
    pub key_holders: Vec<String>,
    /// When the row last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

impl GroupRow {
    /// Whether `user_jid` is a member.
    pub fn has_member(&self, user_jid: &str) -> bool {
        self.members.iter().any(|m| m.jid == user_jid)
    }
}

/// How far one device got with one group message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceReceipt {
    /// Addressed; no receipt yet.
    Sent = 0,
    Delivered = 1,
    Read = 2,
}

fn check_jid(what: &'static str, jid: &str) -> Result<(), StoreError> {
    if jid.len() > MAX_GROUP_JID_BYTES {
        return Err(StoreError::TooLarge {
            what,
            len: jid.len() as u64,
            max: MAX_GROUP_JID_BYTES as u64,
        });
    }
    Ok(())
}

fn check_count(what: &'static str, n: usize, max: usize) -> Result<u32, StoreError> {
    if n > max {
        return Err(StoreError::TooLarge {
            what,
            len: n as u64,
            max: max as u64,
        });
    }
    // INVARIANT: max is at most MAX_GROUP_DEVICES, far below u32::MAX.
    Ok(n as u32)
}

pub(super) fn encode_group(g: &GroupRow) -> Result<Vec<u8>, StoreError> {
    let mut v = vec![GROUP_ROW_VERSION];
    v.extend_from_slice(&g.created_secs.to_be_bytes());
    v.extend_from_slice(&g.updated_ms.to_be_bytes());
    put_bytes(&mut v, "group subject", g.subject.as_bytes())?;
    check_jid("group creator", &g.creator)?;
    put_bytes(&mut v, "group creator", g.creator.as_bytes())?;
    let n = check_count(
        "group members",
        g.members.len(),
        crate::group::MAX_GROUP_MEMBERS,
    )?;
    v.extend_from_slice(&n.to_be_bytes());
    for m in &g.members {
        check_jid("group member", &m.jid)?;
        v.push(u8::from(m.admin));
        put_bytes(&mut v, "group member", m.jid.as_bytes())?;
    }
    let n = check_count("group key holders", g.key_holders.len(), MAX_GROUP_DEVICES)?;
    v.extend_from_slice(&n.to_be_bytes());
    for d in &g.key_holders {
        check_jid("group key holder", d)?;
        put_bytes(&mut v, "group key holder", d.as_bytes())?;
    }
    Ok(v)
}

pub(super) fn decode_group(b: &[u8]) -> Result<GroupRow, StoreError> {
    let corrupt = |detail| StoreError::Corrupt {
        table: "groups",
        detail,
    };
    let mut r = Reader::new(b, "groups");
    r.version(GROUP_ROW_VERSION)?;
    let created_secs = r.u64()?;
    let updated_ms = r.u64()?;
    let subject = r.string()?;
    let creator = r.string()?;
    let n = r.u32()? as usize;
    if n > crate::group::MAX_GROUP_MEMBERS {
        return Err(corrupt("too many members"));
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let admin = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(corrupt("bad admin flag")),
        };
        members.push(GroupMember {
            jid: r.string()?,
            admin,
        });
    }
    let n = r.u32()? as usize;
    if n > MAX_GROUP_DEVICES {
        return Err(corrupt("too many key holders"));
    }
    let mut key_holders = Vec::with_capacity(n);
    for _ in 0..n {
        key_holders.push(r.string()?);
    }
    r.end()?;
    Ok(GroupRow {
        subject,
        creator,
        created_secs,
        members,
        key_holders,
        updated_ms,
    })
}

fn encode_receipts(devices: &[(String, DeviceReceipt)]) -> Result<Vec<u8>, StoreError> {
    let mut v = vec![GROUP_RECEIPT_ROW_VERSION];
    let n = check_count("group receipts", devices.len(), MAX_GROUP_DEVICES)?;
    v.extend_from_slice(&n.to_be_bytes());
    for (d, state) in devices {
        check_jid("group receipt device", d)?;
        v.push(*state as u8);
        put_bytes(&mut v, "group receipt device", d.as_bytes())?;
    }
    Ok(v)
}

fn decode_receipts(b: &[u8]) -> Result<Vec<(String, DeviceReceipt)>, StoreError> {
    let corrupt = |detail| StoreError::Corrupt {
        table: "group_receipts",
        detail,
    };
    let mut r = Reader::new(b, "group_receipts");
    r.version(GROUP_RECEIPT_ROW_VERSION)?;
    let n = r.u32()? as usize;
    if n > MAX_GROUP_DEVICES {
        return Err(corrupt("too many devices"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let state = match r.u8()? {
            0 => DeviceReceipt::Sent,
            1 => DeviceReceipt::Delivered,
            2 => DeviceReceipt::Read,
            _ => return Err(corrupt("unknown receipt state")),
        };
        out.push((r.string()?, state));
    }
    r.end()?;
    Ok(out)
}

impl Txn {
    /// Our copy of group `id` (the bare id, `120363…`).
    pub fn group(&self, id: &str) -> Result<Option<GroupRow>, StoreError> {
        check_key(id)?;
        match self.inner.open_table(GROUPS)?.get(id)? {
            Some(v) => decode_group(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes our copy of group `id`.
    pub fn put_group(&self, id: &str, g: &GroupRow) -> Result<(), StoreError> {
        check_key(id)?;
        let bytes = encode_group(g)?;
        self.inner
            .open_table(GROUPS)?
            .insert(id, bytes.as_slice())?;
        Ok(())
    }

    /// Forgets group `id` (we left, or were removed).
    pub fn delete_group(&self, id: &str) -> Result<bool, StoreError> {
        check_key(id)?;
        Ok(self.inner.open_table(GROUPS)?.remove(id)?.is_some())
    }

    /// Every group we are in, by id.
    pub fn groups(&self) -> Result<Vec<(String, GroupRow)>, StoreError> {
        let t = self.inner.open_table(GROUPS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode_group(v.value())?));
        }
        Ok(out)
    }

    /// How many groups we are in.
    pub fn group_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(GROUPS)?.len()?)
    }

    /// The devices group message `id` was addressed to, and how far each got.
    pub fn group_receipts(
        &self,
        id: &str,
    ) -> Result<Option<Vec<(String, DeviceReceipt)>>, StoreError> {
        check_key(id)?;
        match self.inner.open_table(GROUP_RECEIPTS)?.get(id)? {
            Some(v) => decode_receipts(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Records the devices group message `id` is addressed to (each [`DeviceReceipt::Sent`]).
    pub fn put_group_receipts(
        &self,
        id: &str,
        devices: &[(String, DeviceReceipt)],
    ) -> Result<(), StoreError> {
        check_key(id)?;
        let bytes = encode_receipts(devices)?;
        self.inner
            .open_table(GROUP_RECEIPTS)?
            .insert(id, bytes.as_slice())?;
        Ok(())
    }

    /// Forgets the receipts of group message `id` (retention deletes its outbox row).
    pub fn delete_group_receipts(&self, id: &str) -> Result<(), StoreError> {
        check_key(id)?;
        self.inner.open_table(GROUP_RECEIPTS)?.remove(id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GroupRow {
        GroupRow {
            subject: "Family".into(),
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
            updated_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn a_group_row_round_trips_and_every_truncation_is_corrupt_not_a_panic() {
        let g = sample();
        let bytes = encode_group(&g).unwrap();
        assert_eq!(decode_group(&bytes).unwrap(), g);
        for cut in 0..bytes.len() {
            assert!(decode_group(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_group(&extra).is_err(), "trailing bytes");
    }

    #[test]
    fn group_receipts_round_trip_and_an_unknown_state_is_corrupt() {
        let d = vec![
            ("15550100:0@s.whatsapp.net".to_string(), DeviceReceipt::Read),
            ("15550101:0@s.whatsapp.net".to_string(), DeviceReceipt::Sent),
        ];
        let bytes = encode_receipts(&d).unwrap();
        assert_eq!(decode_receipts(&bytes).unwrap(), d);
        let mut bad = bytes.clone();
        bad[5] = 9;
        assert!(matches!(
            decode_receipts(&bad),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_member_list_over_the_bound_is_refused_when_written() {
        let mut g = sample();
        g.members = (0..=crate::group::MAX_GROUP_MEMBERS)
            .map(|i| GroupMember {
                jid: format!("{i}@s.whatsapp.net"),
                admin: false,
            })
            .collect();
        assert!(matches!(encode_group(&g), Err(StoreError::TooLarge { .. })));
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_group(&b);
            let _ = decode_receipts(&b);
        }
    }
}
