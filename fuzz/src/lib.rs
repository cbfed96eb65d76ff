//! Input layout shared by the codec fuzz targets.
//!
//! The first byte of a fuzz input is a selector, the rest is the byte stream
//! a peer sent. The selector picks the protocol version the decoder starts
//! in (`selector % 3`: 0 = 3.1, 1 = 3.1.1, 2 = 5.0), the size of the chunks
//! the stream arrives in (bits 4..=6, plus one: 1 to 8 bytes), and the
//! maximum packet size (bit 3 set: a small limit of 64 bytes, so that the
//! size check is reached often; clear: 1 MiB). A seed file that starts with
//! `0x00`, `0x01` or `0x02` is therefore a 3.1, 3.1.1 or 5.0 stream fed one
//! byte at a time under the large limit.

use ringmq::protocol::ProtocolVersion;

/// The large packet size limit (bit 3 of the selector clear).
pub const LARGE_MAX_PACKET_SIZE: u32 = 1 << 20;
/// The small packet size limit (bit 3 of the selector set).
pub const SMALL_MAX_PACKET_SIZE: u32 = 64;

/// A fuzz input split into its selector fields and the byte stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamInput<'a> {
    /// The version the decoder starts in (a CONNECT switches it).
    pub version: ProtocolVersion,
    /// How many bytes arrive at a time when the stream is fed in pieces.
    pub chunk_len: usize,
    /// The decoder's maximum packet size.
    pub max_packet_size: u32,
    /// The bytes from the peer.
    pub stream: &'a [u8],
}

impl<'a> StreamInput<'a> {
    /// Splits `data` into selector and stream; `None` for an empty input.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&selector, stream) = data.split_first()?;
        let version = match selector % 3 {
            0 => ProtocolVersion::V3_1,
            1 => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        };
        let chunk_len = usize::from((selector >> 4) & 0x07) + 1;
        let max_packet_size =
            if selector & 0x08 == 0 { LARGE_MAX_PACKET_SIZE } else { SMALL_MAX_PACKET_SIZE };
        Some(Self { version, chunk_len, max_packet_size, stream })
    }
}
