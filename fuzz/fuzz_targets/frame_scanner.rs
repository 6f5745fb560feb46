//! The frame scanner never panics on any byte stream, and where the stream
//! is split never changes what it reports: the events for the whole input
//! at once equal those for the same bytes fed in the pieces the fuzzer
//! chose (the first input byte picks the split points).
#![no_main]

use goaway_transport::test_util::frame::{FrameEvent, FrameScanner};
use libfuzzer_sys::fuzz_target;

fn events(preface: bool, pieces: &[&[u8]]) -> (Vec<FrameEvent>, bool, usize) {
    let mut s: FrameScanner = FrameScanner::starting(preface);
    let mut out = Vec::new();
    for p in pieces {
        s.feed(p, |e| out.push(e));
    }
    (out, s.at_boundary(), s.until_boundary())
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let preface = seed & 1 == 1;
    let whole = events(preface, &[bytes]);

    // Split points from the seed and the data itself: piece lengths
    // 1..=16 or 1..=4096, so both byte-at-a-time and large pieces occur.
    let mut pieces = Vec::new();
    let mut rest = bytes;
    let mut i = 0usize;
    while !rest.is_empty() {
        let r = usize::from(rest[0]) ^ (usize::from(seed) << (i % 4));
        let len = if seed & 2 == 0 {
            1 + r % 16
        } else {
            1 + (r * 17) % 4096
        };
        let (p, tail) = rest.split_at(len.min(rest.len()));
        pieces.push(p);
        rest = tail;
        i += 1;
    }
    let split = events(preface, &pieces);
    assert_eq!(whole, split, "splitting changed the events");

    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(whole, events(preface, &singles), "byte at a time differs");
});
