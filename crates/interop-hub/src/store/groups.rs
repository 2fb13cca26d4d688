//! Groups as gatekeeper state in the hub's store: one row per group (subject, creator,
//! creation time, members with their admin flag) and a membership index by user, so a user's
//! groups are found without a scan. Rows are JSON objects (the hub's store is a test fixture;
//! its layout is not an interchange format).

use super::*;

/// `{group id}` → the group as JSON.
pub(super) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// `(user JID, group id)` → empty: the groups a user is a member of.
pub(super) const MEMBERSHIPS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("group_members");

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's user JID (`15550100@s.whatsapp.net`, `acme-home@interop`).
    pub jid: String,
    pub admin: bool,
}

/// A group as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The bare id (`120363…`).
    pub id: String,
    pub subject: String,
    /// The user JID that created it, or `hub` for the control API.
    pub creator: String,
    pub created_ms: u64,
    pub members: Vec<GroupMember>,
}

impl GroupRecord {
    /// Whether `user` (a user JID) is a member.
    pub fn has_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m.jid == user)
    }

    fn to_json(&self) -> Vec<u8> {
        let members: Vec<serde_json::Value> = self
            .members
            .iter()
            .map(|m| serde_json::json!([m.jid, m.admin]))
            .collect();
        serde_json::json!({
            "subject": self.subject,
            "creator": self.creator,
            "created_ms": self.created_ms,
            "members": members,
        })
        .to_string()
        .into_bytes()
    }

    fn from_json(id: &str, bytes: &[u8]) -> Result<GroupRecord, StoreError> {
        let bad = || corrupt("groups");
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let mut members = Vec::new();
        for m in v
            .get("members")
            .and_then(|m| m.as_array())
            .ok_or_else(bad)?
        {
            let jid = m.get(0).and_then(|j| j.as_str()).ok_or_else(bad)?;
            let admin = m.get(1).and_then(|a| a.as_bool()).ok_or_else(bad)?;
            members.push(GroupMember {
                jid: jid.to_owned(),
                admin,
            });
        }
        Ok(GroupRecord {
            id: id.to_owned(),
            subject: text("subject").ok_or_else(bad)?,
            creator: text("creator").ok_or_else(bad)?,
            created_ms: v
                .get("created_ms")
                .and_then(|c| c.as_u64())
                .ok_or_else(bad)?,
            members,
        })
    }
}

impl HubStore {
    /// The group `id`, if it exists.
    pub fn group(&self, id: &str) -> Result<Option<GroupRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(GROUPS)?;
        match t.get(id)? {
            Some(v) => Ok(Some(GroupRecord::from_json(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes `rec` and its membership index in one transaction; `removed` are user JIDs
    /// that are no longer members.
    pub fn put_group(&self, rec: &GroupRecord, removed: &[String]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(GROUPS)?
                .insert(rec.id.as_str(), rec.to_json().as_slice())?;
            let mut m = txn.open_table(MEMBERSHIPS)?;
            for r in removed {
                m.remove((r.as_str(), rec.id.as_str()))?;
            }
            for member in &rec.members {
                m.insert((member.jid.as_str(), rec.id.as_str()), &[][..])?;
            }
            Ok(())
        })
    }

    /// The ids of the groups `user` (a user JID) is a member of.
    pub fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MEMBERSHIPS)?;
        let mut out = Vec::new();
        for item in t.range((user, "")..)? {
            let (k, _) = item?;
            let (u, g) = k.value();
            if u != user {
                break;
            }
            out.push(g.to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_reads_back_and_its_members_find_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = HubStore::open(dir.path()).unwrap();
        let mut g = GroupRecord {
            id: "120363000000000001".into(),
            subject: "Family".into(),
            creator: "hub".into(),
            created_ms: 7,
            members: vec![
                GroupMember {
                    jid: "15550100@s.whatsapp.net".into(),
                    admin: true,
                },
                GroupMember {
                    jid: "acme-home@interop".into(),
                    admin: false,
                },
            ],
        };
        s.put_group(&g, &[]).unwrap();
        assert_eq!(s.group(&g.id).unwrap(), Some(g.clone()));
        assert_eq!(s.groups_of("acme-home@interop").unwrap(), [g.id.clone()]);
        g.members.pop();
        s.put_group(&g, &["acme-home@interop".into()]).unwrap();
        assert!(s.groups_of("acme-home@interop").unwrap().is_empty());
        assert_eq!(s.group("1").unwrap(), None);
    }
}
