//! The streaming receiver (the codec's body handed on in chunks at random
//! read boundaries, as in streaming mode) against the buffered one (the
//! whole input at once): the chunks put together are the buffered message,
//! the outcome is the same, and a failure seen early is the failure at the
//! end (a failed message never turns complete).
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtpsrv::codec::{Frame, SmtpCodec};
use smtpsrv::proto::{DataOutcome, LineEndings};
use smtpsrv::session::InputMode;
use tokio_util::codec::Decoder;

fn buffered(
    input: &[u8],
    max: usize,
    policy: LineEndings,
) -> Option<(DataOutcome, Vec<u8>, usize)> {
    let mut codec = SmtpCodec::new(1024, policy);
    codec.set_mode(InputMode::Data { max_bytes: max });
    let mut src = BytesMut::from(input);
    match codec.decode(&mut src).unwrap() {
        Some(Frame::DataEnd(outcome)) => Some((outcome, codec.take_body().to_vec(), src.len())),
        None => None,
        Some(other) => panic!("unexpected frame {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let policy = if data[0] & 1 == 0 {
        LineEndings::Reject
    } else {
        LineEndings::Normalize
    };
    let max = 1 + data[1] as usize * 4;
    let step = 1 + data[2] as usize % 64;
    let input = &data[3..];
    let expected = buffered(input, max, policy);

    let mut codec = SmtpCodec::new(1024, policy);
    codec.set_mode(InputMode::Data { max_bytes: max });
    let mut src = BytesMut::new();
    let mut streamed = Vec::new();
    let mut early_failure = None;
    let mut got = None;
    let mut fed = 0;
    while got.is_none() && fed < input.len() {
        let end = (fed + step + (fed * 7) % 13).min(input.len());
        src.extend_from_slice(&input[fed..end]);
        fed = end;
        match codec.decode(&mut src).unwrap() {
            Some(Frame::DataEnd(outcome)) => {
                streamed.extend_from_slice(&codec.take_body());
                got = Some((outcome, src.len() + (input.len() - fed)));
            }
            None => {
                if let Some(f) = codec.body_failure() {
                    early_failure.get_or_insert(format!("{f:?}"));
                }
                streamed.extend_from_slice(&codec.take_chunk());
            }
            Some(other) => panic!("unexpected frame {other:?}"),
        }
    }
    match (expected, got) {
        (None, None) => {}
        (Some((outcome, message, left)), Some((s_outcome, s_left))) => {
            assert_eq!(outcome, s_outcome);
            assert_eq!(left, s_left, "the same bytes are left for the next command");
            if outcome == DataOutcome::Complete {
                assert_eq!(message, streamed, "chunks put together are the message");
                assert!(
                    early_failure.is_none(),
                    "a complete message reported a failure"
                );
            }
            if let Some(f) = early_failure {
                let end = match outcome {
                    DataOutcome::TooLarge => "TooLarge",
                    DataOutcome::BareLineEnding => "BareLineEnding",
                    DataOutcome::Complete => unreachable!(),
                };
                // A bare line ending seen first may still end too large.
                assert!(
                    f == end || (f == "BareLineEnding" && end == "TooLarge"),
                    "{f} then {end}"
                );
            }
        }
        (e, g) => panic!("buffered {e:?} but streamed {g:?}"),
    }
});
