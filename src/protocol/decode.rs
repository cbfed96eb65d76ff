//! The resumable decoder.

use super::*;
use bytes::{Bytes, BytesMut};

/// Splits complete packets off a read buffer.
#[derive(Debug)]
pub struct Decoder {
    version: ProtocolVersion,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for packets of `version` no larger than `max_packet_size`
    /// bytes (fixed header included). A decoded CONNECT switches the
    /// decoder to the version it announces.
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Self { version, max_packet_size }
    }

    /// The protocol version packets are read in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Sets the protocol version packets are read in.
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// Takes one complete packet off the front of `buf`. `Ok(None)`: more
    /// bytes are needed (nothing is consumed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = buf;
        unimplemented!()
    }
}

/// Decodes exactly one complete packet of `version`.
pub fn decode_packet(bytes: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let _ = (bytes, version);
    unimplemented!()
}
