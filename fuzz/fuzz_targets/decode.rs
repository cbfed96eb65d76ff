//! `decode`: arbitrary bytes through `Decoder::decode`, in all three
//! protocol versions (chosen by the first input byte, see `ringmq_fuzz`).
//!
//! The decoder must never panic on data from a peer (design rule: every
//! malformed input becomes a reason code). Beyond that the target checks
//! what the decoder promises:
//! * `Ok(None)` consumes nothing, `Ok(Some(_))` consumes at least the two
//!   bytes of the smallest packet, so the read loop always makes progress;
//! * it is resumable: the stream fed in small chunks gives exactly the same
//!   packets, the same error and the same unconsumed tail as the stream
//!   given at once.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{DecodeError, Decoder, Packet};
use ringmq_fuzz::StreamInput;

/// What a connection's read loop saw: every decode result up to the first
/// error, and how many bytes were left unconsumed.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    unconsumed: usize,
}

/// Calls `decode` until it needs more bytes or fails. `true` once it failed.
fn drain(decoder: &mut Decoder, buf: &mut BytesMut, outcome: &mut Outcome) -> bool {
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(Some(packet)) => {
                assert!(before - buf.len() >= 2, "a packet is at least two bytes");
                outcome.packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must not consume input");
                return false;
            }
            Err(error) => {
                outcome.error = Some(error);
                return true;
            }
        }
    }
}

fn decode_at_once(input: &StreamInput<'_>) -> Outcome {
    let mut decoder = Decoder::new(input.version, input.max_packet_size);
    let mut buf = BytesMut::from(input.stream);
    let mut outcome = Outcome { packets: Vec::new(), error: None, unconsumed: 0 };
    drain(&mut decoder, &mut buf, &mut outcome);
    outcome.unconsumed = buf.len();
    outcome
}

fn decode_in_chunks(input: &StreamInput<'_>) -> Outcome {
    let mut decoder = Decoder::new(input.version, input.max_packet_size);
    let mut buf = BytesMut::new();
    let mut outcome = Outcome { packets: Vec::new(), error: None, unconsumed: 0 };
    let mut fed = 0;
    for chunk in input.stream.chunks(input.chunk_len) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        if drain(&mut decoder, &mut buf, &mut outcome) {
            // The error stops the connection: the rest of the stream was
            // never read, but it counts as unconsumed.
            outcome.unconsumed = buf.len() + input.stream.len() - fed;
            return outcome;
        }
    }
    outcome.unconsumed = buf.len();
    outcome
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else { return };
    let at_once = decode_at_once(&input);
    let in_chunks = decode_in_chunks(&input);
    assert_eq!(at_once, in_chunks, "chunked decoding differs from decoding at once");
});
