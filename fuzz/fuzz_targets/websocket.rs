//! `websocket`: arbitrary client bytes to `WsCodec::decode`, the framing of
//! MQTT over WebSocket (RFC 6455, MQTT section 6).
//!
//! The first byte of the input selects a chunk size (1 to 16); the rest is
//! fed whole to one codec and in chunks of that size to another. Nothing
//! may panic, and:
//! * both yield the same MQTT bytes and end the same way (a refused frame,
//!   a close frame, or more input wanted) with the same frames to send:
//!   frame boundaries and socket reads do not matter [MQTT-6.0.0-2]; the
//!   bytes before a refused frame are yielded whatever the reads;
//! * a codec never yields more bytes than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::protocol::websocket::WsCodec;

/// Feeds `input` in chunks of `chunk` bytes: the MQTT bytes out, the error
/// if one ended it, and the frames the codec has to send.
fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Option<u16>, bool, Vec<u8>) {
    let mut codec = WsCodec::new(Vec::new());
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        let mut buf = piece.to_vec();
        match codec.decode(&mut buf) {
            Ok(n) => {
                assert!(n <= piece.len());
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                assert_eq!(Some(e), codec.error());
                break;
            }
        }
        if codec.close_received() {
            break;
        }
    }
    let error = codec.error().map(|e| e.code());
    (out, error, codec.close_received(), codec.output().to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else { return };
    let chunk = usize::from(first % 16) + 1;
    let whole = run(input, input.len().max(1));
    let chunked = run(input, chunk);
    assert_eq!(whole, chunked, "chunks of {chunk}");
});
