//! The encoder.

use super::*;
use bytes::BytesMut;

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes [MQTT-1.5.5].
    #[error("packet too large to encode")]
    PacketTooLarge,
}

impl Packet {
    /// The exact number of bytes [`Packet::encode`] writes.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let _ = version;
        unimplemented!()
    }

    /// Appends the packet, encoded for `version`, to `buf`.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let _ = (version, buf);
        unimplemented!()
    }
}
