//! The media index and webhook jobs (live and dead-lettered); their rows are opaque here
//! and owned by `media_store.rs` and `events.rs`. Table layouts: docs/store.md.

use super::*;

impl Txn {
    // ---- media index and webhook jobs (rows are opaque to the core; see docs/store.md) ----

    pub fn put_media(&self, id: &[u8; 16], row: &[u8]) -> Result<(), StoreError> {
        self.inner.open_table(MEDIA)?.insert(id, row)?;
        Ok(())
    }

    pub fn media(&self, id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.inner.open_table(MEDIA)?;
        Ok(t.get(id)?.map(|v| v.value().to_vec()))
    }

    /// Removes a media row; true if it existed.
    pub fn remove_media(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self.inner.open_table(MEDIA)?.remove(id)?.is_some())
    }

    /// Media rows with ids strictly after `after` (or from the start), in id order, at most
    /// `limit`.
    pub fn media_scan(
        &self,
        after: Option<&[u8; 16]>,
        limit: usize,
    ) -> Result<Vec<MediaEntry>, StoreError> {
        let t = self.inner.open_table(MEDIA)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&[u8; 16]>(a..)?,
            None => t.range::<&[u8; 16]>(..)?,
        };
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let key = *k.value();
            if after == Some(&key) {
                continue;
            }
            out.push((key, v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn push_webhook_job(&self, job: &[u8]) -> Result<u64, StoreError> {
        let seq = self.next_seq("webhook_seq")?;
        self.inner
            .open_table(WEBHOOK_JOBS)?
            .insert(&seq.to_be_bytes(), job)?;
        Ok(seq)
    }

    /// Removes live webhook job `seq`; true if it was there.
    pub fn remove_webhook_job(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .open_table(WEBHOOK_JOBS)?
            .remove(&seq.to_be_bytes())?
            .is_some())
    }

    /// Rewrites live webhook job `seq` (attempt count, next attempt time). Writes nothing and
    /// returns false if the job is no longer live (delivered or dead-lettered meanwhile).
    pub fn put_webhook_job(&self, seq: u64, job: &[u8]) -> Result<bool, StoreError> {
        let mut t = self.inner.open_table(WEBHOOK_JOBS)?;
        let key = seq.to_be_bytes();
        if t.get(&key)?.is_none() {
            return Ok(false);
        }
        t.insert(&key, job)?;
        Ok(true)
    }

    /// The oldest live webhook job, the next to deliver: one B-tree descent, not a scan.
    pub fn first_webhook_job(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_JOBS)?;
        let first = t.first()?;
        Ok(first.map(|(k, v)| (u64::from_be_bytes(*k.value()), v.value().to_vec())))
    }

    /// Live webhook jobs after sequence number `after`, in order, at most `limit`.
    pub fn webhook_jobs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_JOBS)?;
        scan_u64_table(&t, after, limit)
    }

    /// How many live webhook jobs are stored (O(1): redb keeps each table's length).
    pub fn webhook_job_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(WEBHOOK_JOBS)?.len()?)
    }

    /// Moves live webhook job `seq` into `webhook_dead` under the same key, stored as `job`
    /// (the caller's dead-lettered row), then drops the oldest dead jobs so that at most
    /// `keep_dead` remain. False, and nothing written, if `seq` is not a live job.
    pub fn dead_letter_webhook_job(
        &self,
        seq: u64,
        job: &[u8],
        keep_dead: u64,
    ) -> Result<bool, StoreError> {
        let key = seq.to_be_bytes();
        if self.inner.open_table(WEBHOOK_JOBS)?.remove(&key)?.is_none() {
            return Ok(false);
        }
        let mut dead = self.inner.open_table(WEBHOOK_DEAD)?;
        dead.insert(&key, job)?;
        let excess = dead.len()?.saturating_sub(keep_dead);
        for _ in 0..excess {
            if dead.pop_first()?.is_none() {
                break;
            }
        }
        Ok(true)
    }

    /// Removes dead-lettered webhook job `seq`; true if it was there.
    pub fn remove_dead_webhook_job(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .open_table(WEBHOOK_DEAD)?
            .remove(&seq.to_be_bytes())?
            .is_some())
    }

    /// Dead-lettered webhook jobs after sequence number `after`, in order, at most `limit`.
    pub fn dead_webhook_jobs(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let t = self.inner.open_table(WEBHOOK_DEAD)?;
        scan_u64_table(&t, after, limit)
    }

    /// How many dead-lettered webhook jobs are stored (O(1)).
    pub fn dead_webhook_job_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.open_table(WEBHOOK_DEAD)?.len()?)
    }
}
