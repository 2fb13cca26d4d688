//! A disk whose power can be cut, for tests: a redb [`StorageBackend`] that keeps what the
//! last completed `sync_data` made durable apart from the writes since, and at a cut forgets
//! those writes. Unlike a `kill -9`, which leaves every `write` in the page cache for the
//! kernel to finish, a power cut leaves only the synced image, and the write under way when
//! the power went may land in part (a torn page).
//!
//! The test arms a cut with [`CutDisk::cut_after`]: the n-th mutating call from then on
//! (`write`, `set_len` or `sync_data`) does not complete, and every call after it fails, as
//! on a machine that is off. [`CutDisk::image_after_cut`] then gives the bytes a reboot finds,
//! and [`CutDisk::from_image`] a new disk holding them. No clock and no randomness of its
//! own: what a cut keeps is chosen by the caller's [`CutKeeps`].

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// What a cut leaves of the writes since the last completed `sync_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutKeeps {
    /// Nothing: the disk holds the synced image only.
    Synced,
    /// The synced image, with the first `bytes` of the write under way at the cut (or, when
    /// the cut fell on a `set_len` or `sync_data`, of the last write) over it: a torn page.
    TornLast { bytes: usize },
    /// The synced image, with each write since whose bit in `mask` is set (bit `i % 64` for
    /// the i-th write) landed whole: a drive cache that wrote back some and not others, in
    /// any order, as it may before a flush.
    Some { mask: u64 },
}

/// A write not yet made durable: where, and what.
#[derive(Debug, Clone)]
struct PendingWrite {
    offset: usize,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Disk {
    /// What a completed `sync_data` left: a reboot finds this (plus what a cut keeps).
    durable: Vec<u8>,
    /// What reads see now: `durable` with every write and length change since applied.
    live: Vec<u8>,
    /// Writes since the last completed `sync_data`, in order.
    pending: Vec<PendingWrite>,
    /// The shortest `live` was since the last completed `sync_data`.
    shortest: usize,
    /// The write that was under way when the power went, if the cut fell on a write.
    cut_write: Option<PendingWrite>,
    /// Mutating calls left before the cut; `None` while no cut is armed.
    calls_until_cut: Option<u64>,
    /// The power is off: every call fails.
    cut: bool,
    /// Mutating calls that completed, for sizing where a cut may fall.
    calls: u64,
}

/// The disk; clones share it, so a test keeps one to cut while redb owns another.
#[derive(Debug, Clone, Default)]
pub(crate) struct CutDisk {
    disk: Arc<Mutex<Disk>>,
}

fn power_off() -> io::Error {
    io::Error::other("power cut")
}

impl CutDisk {
    /// An empty disk.
    pub(crate) fn new() -> CutDisk {
        CutDisk::default()
    }

    /// A disk holding `image`, all of it durable: the disk after a reboot.
    pub(crate) fn from_image(image: Vec<u8>) -> CutDisk {
        let disk = Disk {
            live: image.clone(),
            shortest: image.len(),
            durable: image,
            ..Disk::default()
        };
        CutDisk {
            disk: Arc::new(Mutex::new(disk)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic elsewhere in a test poisons the lock; the bytes are still what they were.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a cut: the `n`-th mutating call from now (1 = the next) does not complete.
    pub(crate) fn cut_after(&self, n: u64) {
        self.lock().calls_until_cut = Some(n.max(1));
    }

    /// Cuts the power now, between two calls: no write is under way.
    pub(crate) fn cut_now(&self) {
        let mut disk = self.lock();
        disk.calls_until_cut = None;
        disk.cut = true;
    }

    /// Whether the power is off.
    pub(crate) fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Mutating calls completed so far.
    pub(crate) fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// The bytes a reboot finds: the synced image, with what `keeps` says landed of the
    /// writes since. Length changes since the last sync are lost, except as far as a kept
    /// write reaches past the synced end.
    pub(crate) fn image_after_cut(&self, keeps: CutKeeps) -> Vec<u8> {
        let disk = self.lock();
        let mut image = disk.durable.clone();
        let mut land = |w: &PendingWrite, bytes: usize| {
            let data = w.data.get(..bytes.min(w.data.len())).unwrap_or(&w.data);
            let end = w.offset + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[w.offset..end].copy_from_slice(data);
        };
        match keeps {
            CutKeeps::Synced => {}
            CutKeeps::TornLast { bytes } => {
                if let Some(w) = disk.cut_write.as_ref().or(disk.pending.last()) {
                    land(w, bytes);
                }
            }
            CutKeeps::Some { mask } => {
                for (i, w) in disk.pending.iter().enumerate() {
                    if mask & (1 << (i % 64)) != 0 {
                        land(w, w.data.len());
                    }
                }
            }
        }
        image
    }

    /// Counts a mutating call; `Err` when the power goes (or went) instead.
    fn step(disk: &mut Disk) -> io::Result<()> {
        if disk.cut {
            return Err(power_off());
        }
        if let Some(left) = disk.calls_until_cut.as_mut() {
            *left -= 1;
            if *left == 0 {
                disk.calls_until_cut = None;
                disk.cut = true;
                return Err(power_off());
            }
        }
        disk.calls += 1;
        Ok(())
    }
}

impl StorageBackend for CutDisk {
    fn len(&self) -> io::Result<u64> {
        let disk = self.lock();
        if disk.cut {
            return Err(power_off());
        }
        Ok(disk.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let disk = self.lock();
        if disk.cut {
            return Err(power_off());
        }
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| disk.live.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.lock();
        CutDisk::step(&mut disk)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::OutOfMemory)?;
        disk.live.resize(len, 0);
        disk.shortest = disk.shortest.min(len);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.lock();
        CutDisk::step(&mut disk)?;
        // What reads see becomes durable; copying only what changed keeps a sync cheap.
        let Disk {
            durable,
            live,
            pending,
            shortest,
            ..
        } = &mut *disk;
        durable.truncate(*shortest);
        durable.resize(live.len(), 0);
        *shortest = live.len();
        for w in pending.drain(..) {
            let end = (w.offset + w.data.len()).min(live.len());
            if let (Some(to), Some(from)) =
                (durable.get_mut(w.offset..end), live.get(w.offset..end))
            {
                to.copy_from_slice(from);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.lock();
        let offset = usize::try_from(offset).map_err(|_| io::ErrorKind::OutOfMemory)?;
        let write = PendingWrite {
            offset,
            data: data.to_vec(),
        };
        let was_off = disk.cut;
        if let Err(e) = CutDisk::step(&mut disk) {
            if !was_off {
                // This write is the one the power went under.
                disk.cut_write = Some(write);
            }
            return Err(e);
        }
        let end = offset + data.len();
        if disk.live.len() < end {
            disk.live.resize(end, 0);
        }
        disk.live[offset..end].copy_from_slice(data);
        disk.pending.push(write);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_keeps_what_was_synced_and_forgets_the_rest() {
        let disk = CutDisk::new();
        disk.write(0, b"aaaa").unwrap();
        disk.sync_data().unwrap();
        disk.write(0, b"bb").unwrap();
        disk.write(4, b"cc").unwrap();
        disk.cut_after(1);
        assert!(disk.write(0, b"dddd").is_err());
        assert!(disk.is_cut());
        assert!(disk.read(0, &mut [0; 1]).is_err(), "the power is off");
        assert!(disk.sync_data().is_err());
        assert_eq!(disk.image_after_cut(CutKeeps::Synced), b"aaaa");
        // The write under way tears; the completed but unsynced ones are still lost.
        assert_eq!(
            disk.image_after_cut(CutKeeps::TornLast { bytes: 3 }),
            b"ddda"
        );
        assert_eq!(
            disk.image_after_cut(CutKeeps::Some { mask: 0b10 }),
            b"aaaacc"
        );
        let reborn = CutDisk::from_image(disk.image_after_cut(CutKeeps::Synced));
        let mut out = [0; 4];
        reborn.read(0, &mut out).unwrap();
        assert_eq!(&out, b"aaaa");
        assert_eq!(reborn.len().unwrap(), 4);
    }

    #[test]
    fn a_cut_on_a_sync_leaves_the_previous_sync() {
        let disk = CutDisk::new();
        disk.write(0, b"one").unwrap();
        disk.sync_data().unwrap();
        disk.set_len(8).unwrap();
        disk.write(0, b"two").unwrap();
        disk.cut_after(1);
        assert!(disk.sync_data().is_err());
        assert_eq!(disk.image_after_cut(CutKeeps::Synced), b"one");
        assert_eq!(disk.calls(), 4);
    }
}
