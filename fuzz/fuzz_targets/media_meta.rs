//! Fuzzes the media metadata probes (Ogg/Opus, MP4, image headers) with arbitrary streams.
//!
//! The first byte chooses how the rest is split into chunks; the probes must never panic and
//! must answer the same whatever the split, since the shell feeds them network-sized chunks.
#![no_main]

use interop_proto::media_meta::{ImageProbe, Mp4Probe, OggProbe};
use libfuzzer_sys::fuzz_target;

fn run(
    data: &[u8],
    split: usize,
) -> (
    Result<u32, interop_proto::media_meta::MetaError>,
    Option<u32>,
    Option<(u32, u32)>,
) {
    let (mut ogg, mut mp4, mut img) = (
        OggProbe::default(),
        Mp4Probe::default(),
        ImageProbe::default(),
    );
    for chunk in data.chunks(split.max(1)) {
        ogg.update(chunk);
        mp4.update(chunk);
        img.update(chunk);
    }
    (ogg.finish(), mp4.finish(), img.finish())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = run(rest, rest.len());
    let split = run(rest, usize::from(first) + 1);
    assert_eq!(whole, split);
});
