//! The DATA receiver against a simple reference model, fed in random-sized
//! pieces: same outcome, same unstuffed message, same leftover bytes.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtpsrv::proto::{DataOutcome, DataReceiver, LineEndings};

/// Obviously-correct model: find the terminator, then unstuff and check.
fn reference(input: &[u8], policy: LineEndings) -> Option<(DataOutcome, Vec<u8>, usize)> {
    // The terminator is ".\r\n" at a line start (the start, or after CRLF).
    let mut end = None;
    for p in 0..input.len() {
        let line_start = p == 0 || (p >= 2 && &input[p - 2..p] == b"\r\n");
        if line_start && input[p..].starts_with(b".\r\n") {
            end = Some(p);
            break;
        }
    }
    let end = end?;
    let content = &input[..end];
    let mut out = Vec::new();
    let mut bare = false;
    let mut i = 0;
    let mut line_start = true;
    while i < content.len() {
        let b = content[i];
        if line_start && b == b'.' {
            i += 1;
            line_start = false;
            continue;
        }
        line_start = false;
        match b {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                line_start = true;
                continue;
            }
            b'\r' | b'\n' => {
                bare = true;
                out.extend_from_slice(b"\r\n");
            }
            _ => out.push(b),
        }
        i += 1;
    }
    let outcome = match (bare, policy) {
        (true, LineEndings::Reject) => DataOutcome::BareLineEnding,
        _ => DataOutcome::Complete,
    };
    Some((outcome, out, end + 3))
}

fn run(pieces: &[&[u8]], policy: LineEndings) -> Option<(DataOutcome, Vec<u8>, Vec<u8>)> {
    let mut rx = DataReceiver::new(usize::MAX, policy);
    let mut src = BytesMut::new();
    let mut out = BytesMut::new();
    let mut outcome = None;
    for piece in pieces {
        src.extend_from_slice(piece);
        if outcome.is_none() {
            outcome = rx.feed(&mut src, &mut out);
        }
    }
    outcome.map(|o| (o, out.to_vec(), src.to_vec()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let policy = if seed & 1 == 0 { LineEndings::Reject } else { LineEndings::Normalize };
    // Split points derived from the seed: up to 8 pieces.
    let mut pieces = Vec::new();
    let mut rest = input;
    let mut s = seed as usize | 1;
    while !rest.is_empty() && pieces.len() < 8 {
        s = s.wrapping_mul(31).wrapping_add(7);
        let n = 1 + s % (rest.len().min(64));
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces.push(rest);
    let whole = run(&[input], policy);
    let split = run(&pieces, policy);
    assert_eq!(whole, split, "split feed differs");
    let model = reference(input, policy);
    match (whole, model) {
        (None, None) => {}
        (Some((o, out, left)), Some((mo, mout, used))) => {
            assert_eq!(o, mo);
            if o == DataOutcome::Complete {
                assert_eq!(out, mout);
            }
            assert_eq!(left, &input[used..]);
        }
        (w, m) => panic!("receiver {w:?} vs model {m:?}"),
    }
});
