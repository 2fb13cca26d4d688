//! Stored rows as a file format: a cursor that reads fixed-width big-endian fields from one
//! stored value and rejects short reads, unknown row versions and trailing bytes. Pure: it
//! knows no database, no file and no clock; a store turns a [`RowError`] into its own error.

/// A stored value does not parse: corruption on disk, or a bug that wrote a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowError {
    /// The table the value came from (as named in docs/store.md).
    pub table: &'static str,
    /// What is wrong with it.
    pub detail: &'static str,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt row in table {}: {}", self.table, self.detail)
    }
}

impl std::error::Error for RowError {}

/// A cursor over a stored value that rejects short reads and trailing bytes.
pub struct Reader<'a> {
    rest: &'a [u8],
    table: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(rest: &'a [u8], table: &'static str) -> Self {
        Reader { rest, table }
    }

    fn corrupt(&self, detail: &'static str) -> RowError {
        RowError {
            table: self.table,
            detail,
        }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], RowError> {
        if self.rest.len() < n {
            return Err(self.corrupt("truncated row"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RowError> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| self.corrupt("truncated row"))
    }

    pub fn version(&mut self, want: u8) -> Result<(), RowError> {
        if self.u8()? != want {
            return Err(self.corrupt("unknown row version"));
        }
        Ok(())
    }

    pub fn u8(&mut self) -> Result<u8, RowError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, RowError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, RowError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, RowError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], RowError> {
        let n = self.u32()?;
        let n = usize::try_from(n).map_err(|_| self.corrupt("length overflows usize"))?;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, RowError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("invalid UTF-8"))
    }

    pub fn end(&self) -> Result<(), RowError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_unknown_versions_and_trailing_bytes_are_refused() {
        let mut r = Reader::new(&[1, 0, 0, 0, 7, 9], "t");
        r.version(1).unwrap();
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.end().unwrap_err().detail, "trailing bytes");
        assert_eq!(r.u16().unwrap_err().detail, "truncated row");
        assert_eq!(
            Reader::new(&[2], "t").version(1).unwrap_err().detail,
            "unknown row version"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_read_without_panicking(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut r = Reader::new(&b, "t");
            let _ = r.version(1).and_then(|_| r.string()).and_then(|_| r.u64()).and_then(|_| r.end());
        }
    }
}
