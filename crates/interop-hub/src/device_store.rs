//! A simulated device's Signal state: one redb file per device under the hub's state
//! directory (`<state>/sim/<phone>/<device>/interopd.redb`), holding only the Signal engine's
//! tables, in the same layout as the daemon's store (interop-io's `signal_tables`), so a hub
//! state directory written before the workspace split opens unchanged. Knows no sockets and
//! no clock.

use std::path::Path;

use redb::{Database, WriteTransaction};

use interop_io::signal_tables;
use interop_io::state_dir::{StoreError, ensure_state_dir, open_database};

/// File name of a simulated device's database inside its directory.
pub const DEVICE_DB_FILE_NAME: &str = "interopd.redb";
/// Redb page cache per simulated device, in bytes. Devices are small and many.
pub const DEVICE_CACHE_BYTES: usize = 256 * 1024;

/// One simulated device's open database.
pub struct DeviceStore {
    db: Database,
}

impl DeviceStore {
    /// Opens (creating with mode 0700/0600 on first use) the device database in `dir`.
    pub fn open(dir: &Path) -> Result<DeviceStore, StoreError> {
        ensure_state_dir(dir)?;
        let db = open_database(&dir.join(DEVICE_DB_FILE_NAME), DEVICE_CACHE_BYTES)?;
        let txn = db.begin_write()?;
        signal_tables::create_tables(&txn)?;
        txn.commit()?;
        Ok(DeviceStore { db })
    }

    /// A write transaction; wrap it in [`signal_tables::SignalTables`] for the engine.
    pub fn begin(&self) -> Result<WriteTransaction, StoreError> {
        Ok(self.db.begin_write()?)
    }
}
