use proptest::prelude::*;

use super::*;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let h = FrameHeader {
        len: payload.len() as u32,
        kind,
        flags,
        stream_id,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

fn events(scanner: &mut FrameScanner, chunks: &[&[u8]]) -> Vec<FrameEvent> {
    let mut out = Vec::new();
    for c in chunks {
        scanner.feed(c, |e| out.push(e));
    }
    out
}

/// A realistic client→server byte stream.
fn sample_stream() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    let mut settings = Vec::new();
    settings.extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
    settings.extend_from_slice(&100u32.to_be_bytes());
    settings.extend_from_slice(&4u16.to_be_bytes());
    settings.extend_from_slice(&65535u32.to_be_bytes());
    frame(&mut b, kind::SETTINGS, 0, 0, &settings);
    frame(&mut b, kind::SETTINGS, flags::ACK, 0, &[]);
    frame(
        &mut b,
        kind::HEADERS,
        flags::END_HEADERS,
        1,
        &[0x83, 0x86, 0x84],
    );
    frame(&mut b, kind::DATA, 0, 1, &[7u8; 300]);
    encode_ping(&mut b, false, *b"12345678");
    encode_goaway(&mut b, 7, code::ENHANCE_YOUR_CALM, b"too_many_pings");
    frame(&mut b, kind::DATA, flags::END_STREAM, 1, &[]);
    encode_ping(&mut b, true, [9; 8]);
    b
}

#[test]
fn header_round_trips() {
    let h = FrameHeader {
        len: 0x01_02_03,
        kind: kind::GOAWAY,
        flags: 0x25,
        stream_id: MAX_STREAM_ID,
    };
    assert_eq!(FrameHeader::parse(&h.encode()), h);
    // The reserved bit is ignored on read.
    let mut raw = h.encode();
    raw[5] |= 0x80;
    assert_eq!(FrameHeader::parse(&raw).stream_id, MAX_STREAM_ID);
}

#[test]
fn reports_frames_of_a_whole_stream() {
    let mut s = FrameScanner::after_preface();
    let ev = events(&mut s, &[&sample_stream()]);
    let kinds: Vec<u8> = ev
        .iter()
        .filter_map(|e| match e {
            FrameEvent::Header(h) => Some(h.kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            kind::SETTINGS,
            kind::SETTINGS,
            kind::HEADERS,
            kind::DATA,
            kind::PING,
            kind::GOAWAY,
            kind::DATA,
            kind::PING
        ]
    );
    assert!(ev.contains(&FrameEvent::Setting { id: 3, value: 100 }));
    assert!(ev.contains(&FrameEvent::Setting {
        id: 4,
        value: 65535
    }));
    assert!(ev.contains(&FrameEvent::Ping {
        ack: false,
        payload: *b"12345678"
    }));
    assert!(ev.contains(&FrameEvent::Ping {
        ack: true,
        payload: [9; 8]
    }));
    let goaway = ev
        .iter()
        .find_map(|e| match e {
            FrameEvent::GoAway {
                last_stream_id,
                error_code,
                debug,
            } => Some((*last_stream_id, *error_code, debug.as_bytes().to_vec())),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        goaway,
        (7, code::ENHANCE_YOUR_CALM, b"too_many_pings".to_vec())
    );
    assert!(s.at_boundary());
}

#[test]
fn one_byte_at_a_time_gives_the_same_events() {
    let bytes = sample_stream();
    let whole = events(&mut FrameScanner::after_preface(), &[&bytes]);
    let mut s = FrameScanner::after_preface();
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(events(&mut s, &singles), whole);
}

#[test]
fn until_boundary_walks_frame_edges() {
    let mut s = FrameScanner::after_preface();
    assert_eq!(s.until_boundary(), 24);
    s.feed(&PREFACE[..20], |_| {});
    assert_eq!(s.until_boundary(), 4);
    s.feed(&PREFACE[20..], |_| {});
    assert!(s.at_boundary());
    let mut b = Vec::new();
    frame(&mut b, kind::DATA, 0, 1, &[0; 10]);
    s.feed(&b[..4], |_| {});
    assert_eq!(s.until_boundary(), 5);
    s.feed(&b[4..9], |_| {});
    assert_eq!(s.until_boundary(), 10);
    s.feed(&b[9..15], |_| {});
    assert_eq!(s.until_boundary(), 4);
    s.feed(&b[15..], |_| {});
    assert_eq!(s.until_boundary(), 0);
}

#[test]
fn long_goaway_debug_data_is_truncated_but_stays_in_step() {
    let mut b = Vec::new();
    encode_goaway(&mut b, 3, code::NO_ERROR, &[b'x'; 500]);
    encode_ping(&mut b, false, [1; 8]);
    let ev = events(&mut FrameScanner::new(), &[&b]);
    match ev[1] {
        FrameEvent::GoAway { debug, .. } => {
            assert_eq!(debug.as_bytes(), &[b'x'; MAX_DEBUG_CAPTURE][..])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ev[3],
        FrameEvent::Ping {
            ack: false,
            payload: [1; 8]
        }
    );
}

#[test]
fn malformed_sizes_produce_headers_but_no_payload_events() {
    let mut b = Vec::new();
    frame(&mut b, kind::PING, 0, 0, &[1, 2, 3]); // PING must be 8 bytes
    frame(&mut b, kind::GOAWAY, 0, 0, &[1, 2]); // GOAWAY needs 8
    frame(&mut b, kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0]); // not a multiple of 6
    let ev = events(&mut FrameScanner::new(), &[&b]);
    assert_eq!(ev.len(), 3);
    assert!(ev.iter().all(|e| matches!(e, FrameEvent::Header(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any split of a valid stream gives exactly the events of the whole.
    #[test]
    fn random_splits_give_identical_events(
        frames in prop::collection::vec((0u8..10, any::<u8>(), 0u32..16, prop::collection::vec(any::<u8>(), 0..80)), 0..24),
        cuts in prop::collection::vec(0usize..2000, 0..40),
    ) {
        let mut bytes = PREFACE.to_vec();
        for (k, fl, sid, payload) in &frames {
            frame(&mut bytes, *k, *fl, *sid, payload);
        }
        let whole = events(&mut FrameScanner::after_preface(), &[&bytes]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            chunks.push(&bytes[start..c]);
            start = c;
        }
        let mut s = FrameScanner::after_preface();
        prop_assert_eq!(events(&mut s, &chunks), whole);
        prop_assert!(s.at_boundary());
    }

    /// Garbage never panics, and the scanner always knows how far the next
    /// boundary is.
    #[test]
    fn garbage_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..32)) {
        let mut s = FrameScanner::after_preface();
        for c in &chunks {
            s.feed(c, |_| {});
            prop_assert_eq!(s.until_boundary() == 0, s.at_boundary());
        }
    }
}
