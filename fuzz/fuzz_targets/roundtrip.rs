//! `roundtrip`: decode -> encode -> decode.
//!
//! Every packet the decoder accepts from the stream (version chosen by the
//! first input byte, see `ringmq_fuzz`) is encoded in the version it was
//! read in. Then:
//! * `encoded_len` is exactly the number of bytes `encode` wrote;
//! * the encoding decodes again, to a packet equal to the first one;
//! * encoding that packet gives the same bytes again (the encoding is a
//!   fixed point, so what ringmq sends is canonical).
//!
//! The first encoding need not equal the input bytes: a peer may order v5
//! properties differently or send a Success reason code the encoder omits.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{decode_packet, Decoder, Packet, ProtocolVersion};
use ringmq_fuzz::StreamInput;

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let len = packet.encoded_len(version).expect("a decoded packet has an encoded length");
    let mut buf = BytesMut::with_capacity(len);
    packet.encode(version, &mut buf).expect("a decoded packet encodes");
    assert_eq!(buf.len(), len, "encoded_len disagrees with encode for {packet:?}");
    buf
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else { return };
    let mut decoder = Decoder::new(input.version, input.max_packet_size);
    let mut buf = BytesMut::from(input.stream);
    while let Ok(Some(packet)) = decoder.decode(&mut buf) {
        // After a CONNECT the decoder speaks the version it announced,
        // which is also the version the CONNECT itself was read in.
        let version = decoder.version();
        let first = encode(&packet, version);
        let again = match decode_packet(first.clone().freeze(), version) {
            Ok(again) => again,
            Err(error) => panic!("re-decoding {packet:?} ({version:?}) failed: {error}"),
        };
        assert_eq!(again, packet, "decode(encode(p)) != p in {version:?}");
        let second = encode(&again, version);
        assert_eq!(first, second, "re-encoding is not byte-identical for {packet:?}");
    }
});
