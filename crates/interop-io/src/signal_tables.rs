//! The Signal engine's tables in a redb file: the one [`SignalStore`] implementation over a
//! redb write transaction, used by the daemon's store and by the hub's simulated devices, so
//! both keep the same table names and key layouts (docs/store.md: `local_identity`,
//! `prekeys`, `signed_prekeys`, `sessions`, `remote_identities`, `sender_keys`, and counters in `meta`).

use interop_proto::signal_store::{IdTable, KeyTable, SignalStore};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::state_dir::StoreError;

/// Counters and small values by name; values are big-endian integers or row bytes.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const LOCAL_IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("local_identity");
pub const PREKEYS: TableDefinition<&[u8; 4], &[u8]> = TableDefinition::new("prekeys");
pub const SIGNED_PREKEYS: TableDefinition<&[u8; 4], &[u8]> = TableDefinition::new("signed_prekeys");
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub const REMOTE_IDENTITIES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("remote_identities");
pub const SENDER_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("sender_keys");

fn key_table(t: KeyTable) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        KeyTable::LocalIdentity => LOCAL_IDENTITY,
        KeyTable::Sessions => SESSIONS,
        KeyTable::RemoteIdentities => REMOTE_IDENTITIES,
        KeyTable::SenderKeys => SENDER_KEYS,
    }
}

fn id_table(t: IdTable) -> TableDefinition<'static, &'static [u8; 4], &'static [u8]> {
    match t {
        IdTable::PreKeys => PREKEYS,
        IdTable::SignedPreKeys => SIGNED_PREKEYS,
    }
}

/// Creates the engine's tables, so a fresh file answers reads before its first write.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?;
    for t in [
        KeyTable::LocalIdentity,
        KeyTable::Sessions,
        KeyTable::RemoteIdentities,
        KeyTable::SenderKeys,
    ] {
        txn.open_table(key_table(t))?;
    }
    for t in [IdTable::PreKeys, IdTable::SignedPreKeys] {
        txn.open_table(id_table(t))?;
    }
    Ok(())
}

/// The engine's view of a redb write transaction. Its writes commit with the transaction.
pub struct SignalTables<'a>(pub &'a WriteTransaction);

impl SignalStore for SignalTables<'_> {
    type Error = StoreError;

    fn get(&self, table: KeyTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(key_table(table))?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn put(&self, table: KeyTable, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.open_table(key_table(table))?.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, table: KeyTable, key: &str) -> Result<(), StoreError> {
        self.0.open_table(key_table(table))?.remove(key)?;
        Ok(())
    }

    fn scan_prefix(
        &self,
        table: KeyTable,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let t = self.0.open_table(key_table(table))?;
        let mut out = Vec::new();
        for item in t.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn get_id(&self, table: IdTable, id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(id_table(table))?;
        Ok(t.get(&id.to_be_bytes())?.map(|v| v.value().to_vec()))
    }

    fn put_id(&self, table: IdTable, id: u32, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .open_table(id_table(table))?
            .insert(&id.to_be_bytes(), value)?;
        Ok(())
    }

    fn remove_id(&self, table: IdTable, id: u32) -> Result<bool, StoreError> {
        let mut t = self.0.open_table(id_table(table))?;
        Ok(t.remove(&id.to_be_bytes())?.is_some())
    }

    fn count_ids(&self, table: IdTable) -> Result<u64, StoreError> {
        Ok(self.0.open_table(id_table(table))?.len()?)
    }

    fn first_ids(&self, table: IdTable, limit: usize) -> Result<Vec<u32>, StoreError> {
        let t = self.0.open_table(id_table(table))?;
        let mut out = Vec::new();
        for item in t.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item?;
            out.push(u32::from_be_bytes(*k.value()));
        }
        Ok(out)
    }

    fn counter(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let t = self.0.open_table(META)?;
        let Some(v) = t.get(name)? else {
            return Ok(None);
        };
        let b: [u8; 4] = v.value().try_into().map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "bad u32",
        })?;
        Ok(Some(u32::from_be_bytes(b)))
    }

    fn set_counter(&self, name: &str, value: u32) -> Result<(), StoreError> {
        self.0
            .open_table(META)?
            .insert(name, &value.to_be_bytes()[..])?;
        Ok(())
    }
}
