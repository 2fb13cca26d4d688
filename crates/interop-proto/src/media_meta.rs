//! Cheap metadata read from media as it streams past: image width and height, Ogg/Opus
//! duration (and proof that a voice note really is Ogg/Opus), and MP4 duration from `mvhd`.
//! Sans-I/O: probes take chunks in any split and answer at `finish`, holding a bounded amount
//! of memory whatever the file size. No clock, no randomness, no files.
//!
//! - Images: the first [`MAX_IMAGE_PREFIX_BYTES`] are kept and handed to the `imagesize`
//!   crate (JPEG, PNG, WebP). Dimensions past that prefix are simply not reported.
//! - Ogg: page headers are scanned (RFC 3533); the first page must carry `OpusHead`
//!   (RFC 7845), and the duration is (last granule position − pre-skip) / 48 000.
//! - MP4: top-level boxes are skipped until `moov`, whose `mvhd` gives timescale and
//!   duration (ISO/IEC 14496-12). A file whose `moov` sits at the end is read to the end
//!   without buffering it.

/// Bytes of an image kept to find its dimensions.
pub const MAX_IMAGE_PREFIX_BYTES: usize = 256 * 1024;
/// Opus granule positions count 48 kHz samples whatever the input rate (RFC 7845 section 4).
pub const OPUS_GRANULE_RATE: u64 = 48_000;
/// An Ogg page header is 27 bytes plus up to 255 lacing values.
const OGG_MAX_HEADER_BYTES: usize = 27 + 255;
/// Bytes of the first page's body needed to read `OpusHead` (magic 8, version 1, channels 1,
/// pre-skip 2).
const OPUS_HEAD_BYTES: usize = 12;
/// Bytes of `mvhd` needed (version 1 layout: 4 + 8 + 8 + 4 + 8).
const MVHD_MAX_BYTES: usize = 32;
/// Longest plausible media duration we report, in seconds (a day); longer is treated as junk.
pub const MAX_REPORTED_SECONDS: u64 = 24 * 3600;

/// Why a body is not what its kind claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// Client: a voice note must be Ogg/Opus; this body is not (the API answers 415).
    NotOggOpus { detail: &'static str },
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotOggOpus { detail } => write!(f, "not an Ogg/Opus stream: {detail}"),
        }
    }
}

impl std::error::Error for MetaError {}

// ---- images -------------------------------------------------------------------------------

/// Collects an image's first bytes and reads its dimensions at the end.
#[derive(Default)]
pub struct ImageProbe {
    prefix: Vec<u8>,
}

impl ImageProbe {
    pub fn update(&mut self, chunk: &[u8]) {
        let room = MAX_IMAGE_PREFIX_BYTES.saturating_sub(self.prefix.len());
        let take = room.min(chunk.len());
        self.prefix
            .extend_from_slice(chunk.get(..take).unwrap_or_default());
    }

    /// `(width, height)` if the header was readable within the prefix.
    pub fn finish(self) -> Option<(u32, u32)> {
        let size = imagesize::blob_size(&self.prefix).ok()?;
        let w = u32::try_from(size.width).ok()?;
        let h = u32::try_from(size.height).ok()?;
        (w > 0 && h > 0).then_some((w, h))
    }
}

// ---- Ogg/Opus -----------------------------------------------------------------------------

/// Scans Ogg pages. Memory: one page header and the first few body bytes.
pub struct OggProbe {
    header: Vec<u8>,
    /// Body bytes of the current page still to pass.
    skip: u64,
    pages: u64,
    serial: Option<u32>,
    pre_skip: Option<u64>,
    head: Vec<u8>,
    in_first_body: bool,
    last_granule: Option<u64>,
    error: Option<&'static str>,
}

impl Default for OggProbe {
    fn default() -> Self {
        OggProbe {
            header: Vec::with_capacity(OGG_MAX_HEADER_BYTES),
            skip: 0,
            pages: 0,
            serial: None,
            pre_skip: None,
            head: Vec::with_capacity(OPUS_HEAD_BYTES),
            in_first_body: false,
            last_granule: None,
            error: None,
        }
    }
}

impl OggProbe {
    pub fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && self.error.is_none() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let (body, rest) = chunk.split_at(n);
                if self.in_first_body && self.head.len() < OPUS_HEAD_BYTES {
                    let want = (OPUS_HEAD_BYTES - self.head.len()).min(body.len());
                    self.head.extend_from_slice(&body[..want]);
                    if self.head.len() == OPUS_HEAD_BYTES {
                        self.check_opus_head();
                    }
                }
                self.skip -= n as u64;
                chunk = rest;
                if self.skip == 0 && self.in_first_body {
                    self.in_first_body = false;
                    if self.pre_skip.is_none() && self.error.is_none() {
                        self.error = Some("first page holds no OpusHead");
                    }
                }
                continue;
            }
            // Collect a header: 27 fixed bytes, then the lacing table.
            let need = if self.header.len() < 27 {
                27
            } else {
                27 + usize::from(self.header[26])
            };
            let n = (need - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.header.len() == 27 && &self.header[..4] != b"OggS" {
                self.error = Some("missing OggS capture pattern");
                return;
            }
            if self.header.len() >= 27 && self.header.len() == 27 + usize::from(self.header[26]) {
                self.end_header();
            }
        }
    }

    fn end_header(&mut self) {
        let h = std::mem::take(&mut self.header);
        // INVARIANT: end_header runs only once 27 + lacing bytes are collected.
        let granule = u64::from_le_bytes(h[6..14].try_into().unwrap_or([0; 8]));
        let serial = u32::from_le_bytes(h[14..18].try_into().unwrap_or([0; 4]));
        let body: u64 = h[27..].iter().map(|b| u64::from(*b)).sum();
        if h[4] != 0 {
            self.error = Some("unknown Ogg version");
            return;
        }
        self.pages += 1;
        match self.serial {
            None => {
                if h[5] & 0x02 == 0 {
                    self.error = Some("first page is not a beginning of stream");
                    return;
                }
                self.serial = Some(serial);
                self.in_first_body = true;
            }
            // Other logical streams (multiplexed) are ignored; the first one is the audio.
            Some(s) if s == serial && granule != u64::MAX => self.last_granule = Some(granule),
            Some(_) => {}
        }
        self.skip = body;
        if body == 0 && self.in_first_body {
            self.in_first_body = false;
            self.error = Some("first page holds no OpusHead");
        }
        self.header = h;
        self.header.clear();
    }

    fn check_opus_head(&mut self) {
        if &self.head[..8] != b"OpusHead" {
            self.error = Some("first packet is not OpusHead");
            return;
        }
        if self.head[8] >> 4 != 0 {
            self.error = Some("unsupported OpusHead version");
            return;
        }
        self.pre_skip = Some(u64::from(u16::from_le_bytes([
            self.head[10],
            self.head[11],
        ])));
    }

    /// The duration in whole seconds (rounded up), or why this is not Ogg/Opus.
    pub fn finish(self) -> Result<u32, MetaError> {
        if let Some(detail) = self.error {
            return Err(MetaError::NotOggOpus { detail });
        }
        let Some(pre_skip) = self.pre_skip else {
            return Err(MetaError::NotOggOpus {
                detail: "stream ends before OpusHead",
            });
        };
        if self.skip > 0 || !self.header.is_empty() {
            return Err(MetaError::NotOggOpus {
                detail: "stream ends inside a page",
            });
        }
        let samples = self.last_granule.unwrap_or(0).saturating_sub(pre_skip);
        let secs = samples
            .div_ceil(OPUS_GRANULE_RATE)
            .min(MAX_REPORTED_SECONDS);
        Ok(u32::try_from(secs).unwrap_or(u32::MAX))
    }
}

// ---- MP4 ----------------------------------------------------------------------------------

/// Finds `moov/mvhd` in an MP4 stream. Memory: one box header and the `mvhd` fields.
#[derive(Default)]
pub struct Mp4Probe {
    header: Vec<u8>,
    skip: u64,
    /// Bytes of `moov` content not yet consumed, while inside it.
    in_moov: Option<u64>,
    mvhd: Option<Vec<u8>>,
    mvhd_left: u64,
    seconds: Option<u32>,
    broken: bool,
}

impl Mp4Probe {
    pub fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && !self.broken && self.seconds.is_none() {
            if let Some(buf) = self.mvhd.as_mut() {
                let want = (MVHD_MAX_BYTES - buf.len()).min(chunk.len());
                let want = want.min(usize::try_from(self.mvhd_left).unwrap_or(usize::MAX));
                buf.extend_from_slice(&chunk[..want]);
                self.mvhd_left -= want as u64;
                chunk = &chunk[want..];
                if buf.len() == MVHD_MAX_BYTES || self.mvhd_left == 0 {
                    self.seconds = parse_mvhd(buf);
                    self.broken = self.seconds.is_none();
                }
                continue;
            }
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.skip -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            let need = if self.header.len() >= 4 && self.header[..4] == [0, 0, 0, 1] {
                16
            } else {
                8
            };
            let n = (need - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.header.len() == need && (need == 16 || self.header[..4] != [0, 0, 0, 1]) {
                self.end_header();
            }
        }
    }

    fn end_header(&mut self) {
        let h = std::mem::take(&mut self.header);
        let header_len = h.len() as u64;
        let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let size = match size32 {
            1 => u64::from_be_bytes(h[8..16].try_into().unwrap_or([0; 8])),
            // Size 0 means "to the end of the file": nothing after it to find.
            0 => u64::MAX,
            s => u64::from(s),
        };
        if size < header_len {
            self.broken = true;
            return;
        }
        let content = size.saturating_sub(header_len);
        if let Some(left) = self.in_moov.as_mut() {
            if *left < size {
                self.broken = true;
                return;
            }
            *left -= size;
        }
        match (&h[4..8], self.in_moov.is_some()) {
            (b"moov", false) => self.in_moov = Some(content),
            (b"mvhd", true) => {
                self.mvhd = Some(Vec::with_capacity(MVHD_MAX_BYTES));
                self.mvhd_left = content;
            }
            _ => self.skip = content,
        }
        if self.in_moov == Some(0) {
            self.in_moov = None;
        }
    }

    /// The duration in whole seconds (rounded up), if `mvhd` was found and sane.
    pub fn finish(self) -> Option<u32> {
        self.seconds
    }
}

fn parse_mvhd(b: &[u8]) -> Option<u32> {
    let version = *b.first()?;
    let (timescale, duration) = match version {
        0 => {
            let ts = u32::from_be_bytes(b.get(12..16)?.try_into().ok()?);
            let d = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?);
            (u64::from(ts), u64::from(d))
        }
        1 => {
            let ts = u32::from_be_bytes(b.get(20..24)?.try_into().ok()?);
            let d = u64::from_be_bytes(b.get(24..32)?.try_into().ok()?);
            (u64::from(ts), d)
        }
        _ => return None,
    };
    if timescale == 0 || duration == u64::MAX || (version == 0 && duration == u64::from(u32::MAX)) {
        return None;
    }
    let secs = duration.div_ceil(timescale);
    (secs <= MAX_REPORTED_SECONDS)
        .then(|| u32::try_from(secs).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds one Ogg page (CRC left zero: we do not check it).
    fn ogg_page(header_type: u8, granule: u64, serial: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut left = body.len();
        loop {
            let n = left.min(255);
            lacing.push(n as u8);
            left -= n;
            if n < 255 {
                break;
            }
        }
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(header_type);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(&lacing);
        p.extend_from_slice(body);
        p
    }

    fn opus_file(pre_skip: u16, last_granule: u64) -> Vec<u8> {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1]);
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut f = ogg_page(0x02, 0, 7, 0, &head);
        f.extend(ogg_page(0, 0, 7, 1, b"OpusTags\0\0\0\0\0\0\0\0"));
        f.extend(ogg_page(0, last_granule / 2, 7, 2, &[0xAB; 300]));
        f.extend(ogg_page(0x04, last_granule, 7, 3, &[0xCD; 100]));
        f
    }

    fn probe_ogg(data: &[u8], split: usize) -> Result<u32, MetaError> {
        let mut p = OggProbe::default();
        for c in data.chunks(split.max(1)) {
            p.update(c);
        }
        p.finish()
    }

    #[test]
    fn opus_duration_subtracts_pre_skip_and_rounds_up() {
        // 10 s of audio plus a 312-sample pre-skip.
        let f = opus_file(312, 480_000 + 312);
        assert_eq!(probe_ogg(&f, 7), Ok(10));
        let f = opus_file(312, 480_000 + 313);
        assert_eq!(probe_ogg(&f, 4096), Ok(11));
    }

    #[test]
    fn non_ogg_body_is_refused_as_not_ogg_opus() {
        assert!(probe_ogg(b"RIFF....WAVEfmt ", 3).is_err());
        assert!(probe_ogg(b"", 3).is_err());
    }

    #[test]
    fn ogg_vorbis_is_not_opus() {
        let mut f = ogg_page(0x02, 0, 1, 0, b"\x01vorbis\0\0\0\0\x01");
        f.extend(ogg_page(0x04, 44_100, 1, 1, &[0; 10]));
        assert!(matches!(
            probe_ogg(&f, 5),
            Err(MetaError::NotOggOpus { .. })
        ));
    }

    #[test]
    fn truncated_ogg_is_refused() {
        let f = opus_file(0, 48_000);
        assert!(probe_ogg(&f[..f.len() - 5], 9).is_err());
    }

    fn mp4_box(kind: &[u8; 4], content: &[u8]) -> Vec<u8> {
        let mut b = ((content.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(content);
        b
    }

    fn mvhd_v0(timescale: u32, duration: u32) -> Vec<u8> {
        let mut c = vec![0u8; 4 + 4 + 4];
        c.extend_from_slice(&timescale.to_be_bytes());
        c.extend_from_slice(&duration.to_be_bytes());
        c.extend_from_slice(&[0u8; 80]);
        mp4_box(b"mvhd", &c)
    }

    fn probe_mp4(data: &[u8], split: usize) -> Option<u32> {
        let mut p = Mp4Probe::default();
        for c in data.chunks(split.max(1)) {
            p.update(c);
        }
        p.finish()
    }

    #[test]
    fn mp4_duration_comes_from_mvhd_even_when_moov_is_last() {
        let mut f = mp4_box(b"ftyp", b"isom\0\0\0\0isomiso2");
        f.extend(mp4_box(b"mdat", &[0x55; 5000]));
        let mut moov = mvhd_v0(1000, 12_345);
        moov.extend(mp4_box(b"trak", &[0; 40]));
        f.extend(mp4_box(b"moov", &moov));
        for split in [1, 3, 64, 100_000] {
            assert_eq!(probe_mp4(&f, split), Some(13));
        }
    }

    #[test]
    fn mp4_version_1_mvhd_and_largesize_boxes_work() {
        let mut c = vec![1u8, 0, 0, 0];
        c.extend_from_slice(&[0; 16]);
        c.extend_from_slice(&600u32.to_be_bytes());
        c.extend_from_slice(&(600u64 * 42).to_be_bytes());
        c.extend_from_slice(&[0; 20]);
        let mvhd = mp4_box(b"mvhd", &c);
        let mut moov = (1u32).to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend_from_slice(&((mvhd.len() + 16) as u64).to_be_bytes());
        moov.extend(mvhd);
        assert_eq!(probe_mp4(&moov, 5), Some(42));
    }

    #[test]
    fn mp4_without_moov_or_with_bad_sizes_has_no_duration() {
        assert_eq!(probe_mp4(&mp4_box(b"mdat", &[0; 100]), 10), None);
        assert_eq!(probe_mp4(&[0, 0, 0, 3, b'b', b'a', b'd', b'!'], 2), None);
        assert_eq!(probe_mp4(&mp4_box(b"moov", &mvhd_v0(0, 100)), 4), None);
    }

    #[test]
    fn image_dimensions_from_png_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        let mut p = ImageProbe::default();
        for c in png.chunks(3) {
            p.update(c);
        }
        assert_eq!(p.finish(), Some((640, 480)));
    }

    #[test]
    fn image_prefix_is_bounded() {
        let mut p = ImageProbe::default();
        for _ in 0..10 {
            p.update(&[0u8; 100_000]);
        }
        assert_eq!(p.prefix.len(), MAX_IMAGE_PREFIX_BYTES);
        assert_eq!(p.finish(), None);
    }

    proptest! {
        #[test]
        fn probes_never_panic_and_ignore_chunking(data in proptest::collection::vec(any::<u8>(), 0..2000), split in 1usize..64) {
            let whole = (probe_ogg(&data, data.len().max(1)), probe_mp4(&data, data.len().max(1)));
            let split_up = (probe_ogg(&data, split), probe_mp4(&data, split));
            prop_assert_eq!(whole, split_up);
            let mut p = ImageProbe::default();
            p.update(&data);
            let _ = p.finish();
        }

        #[test]
        fn opus_durations_round_trip(secs in 0u64..36_000, pre_skip in 0u16..4000, split in 1usize..500) {
            let f = opus_file(pre_skip, secs * OPUS_GRANULE_RATE + u64::from(pre_skip));
            prop_assert_eq!(probe_ogg(&f, split), Ok(secs as u32));
        }
    }
}
