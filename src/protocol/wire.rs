//! The data representations of MQTT [MQTT-1.5]: integers, Variable Byte
//! Integers, UTF-8 Encoded Strings and Binary Data, read from a packet body
//! and written into an output buffer.

use super::{DecodeError, TopicError, TopicName};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

/// The largest Variable Byte Integer, and so the largest remaining length
/// [MQTT-1.5.5].
pub(crate) const MAX_VAR_INT: u32 = 268_435_455;

/// Decodes a Variable Byte Integer from the start of `bytes`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((value, len)))` otherwise.
/// More than four bytes, or a non-minimal encoding, is malformed
/// [MQTT-1.5.5-1].
pub(crate) fn peek_var_int(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero continuation group (0x80 0x00) is a longer
            // form of a smaller number.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVarInt);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedVarInt)
    } else {
        Ok(None)
    }
}

/// The number of bytes the Variable Byte Integer `value` takes.
pub(crate) const fn var_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`MAX_VAR_INT`]) as a Variable Byte Integer.
pub(crate) fn put_var_int(buf: &mut BytesMut, mut value: u32) {
    debug_assert!(value <= MAX_VAR_INT);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Bytes of a length-prefixed field (string or binary): 2 + len.
pub(crate) const fn prefixed_len(len: usize) -> usize {
    2 + len
}

/// Writes a Two Byte Integer length and the bytes [MQTT-1.5.6].
/// The caller has checked that `bytes` is at most 65,535 long.
pub(crate) fn put_prefixed(buf: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= u16::MAX as usize);
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

/// What one pass over a topic name's bytes found.
#[derive(Debug, PartialEq, Eq)]
struct TopicScan {
    /// A U+0000 [MQTT-1.5.4-2].
    nul: bool,
    /// A `+` or `#` [MQTT-3.3.2-2].
    wildcard: bool,
    /// Every byte below 0x80.
    ascii: bool,
}

impl TopicScan {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

    /// Scans eight bytes per step (SWAR).
    #[inline(always)]
    fn of(bytes: &[u8]) -> Self {
        let (mut nul, mut wildcard, mut high) = (false, false, 0u64);
        let mut step = |word: u64| {
            nul |= Self::has_zero_byte(word);
            wildcard |= Self::has_zero_byte(word ^ (Self::ONES * u64::from(b'+')))
                | Self::has_zero_byte(word ^ (Self::ONES * u64::from(b'#')));
            high |= word;
        };
        let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes.len() >= 8 {
            let mut chunks = bytes.chunks_exact(8);
            for chunk in &mut chunks {
                step(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")));
            }
            if !chunks.remainder().is_empty() {
                // The last eight bytes, overlapping bytes already seen.
                step(word(bytes.len() - 8));
            }
        } else {
            // Padded with a byte that triggers nothing.
            let mut short = [b'a'; 8];
            short[..bytes.len()].copy_from_slice(bytes);
            step(u64::from_ne_bytes(short));
        }
        Self { nul, wildcard, ascii: high & Self::HIGH_BITS == 0 }
    }

    /// Whether any byte of `word` is zero; exact (the borrow into a byte
    /// above a zero byte only matters when there is a zero byte).
    fn has_zero_byte(word: u64) -> bool {
        word.wrapping_sub(Self::ONES) & !word & Self::HIGH_BITS != 0
    }
}

/// A cursor over one packet body. Every read fails with
/// [`DecodeError::Truncated`] rather than run past the end.
#[derive(Debug)]
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Self { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.bytes.is_empty() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.bytes.len() < 2 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.bytes.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.get_u32())
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        match peek_var_int(&self.bytes)? {
            Some((value, len)) => {
                self.bytes.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Truncated),
        }
    }

    /// The next `len` bytes, shared with the packet buffer.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        Ok(self.bytes.split_to(len))
    }

    /// Everything left, shared with the packet buffer.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// Binary Data: a Two Byte length and that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// The topic name of a PUBLISH: a UTF-8 Encoded String with the checks
    /// of [`Self::string`] and no wildcard character [MQTT-3.3.2-2]. It may
    /// be empty; whether a Topic Alias allows that is for the caller.
    ///
    /// This is the hot path of every PUBLISH: one pass, eight bytes at a
    /// time, finds U+0000, wildcards and non-ASCII bytes (an ASCII name needs
    /// no UTF-8 validation), and a short name is copied into the
    /// [`TopicName`] rather than sharing the buffer.
    #[inline]
    pub(crate) fn topic_name(&mut self) -> Result<TopicName, DecodeError> {
        let len = usize::from(self.u16()?);
        let Some(raw) = self.bytes.get(..len) else { return Err(DecodeError::Truncated) };
        let scan = TopicScan::of(raw);
        if scan.nul {
            return Err(DecodeError::NullCharacter);
        }
        let text = if scan.ascii {
            // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(raw) }
        } else {
            std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?
        };
        if scan.wildcard {
            return Err(DecodeError::InvalidTopicName(TopicError::WildcardInName));
        }
        if len <= TopicName::INLINE_CAPACITY {
            let name = TopicName::inline(text);
            self.bytes.advance(len);
            Ok(name)
        } else {
            let shared = self.bytes.split_to(len);
            // SAFETY: the same bytes were just validated as `text`.
            Ok(TopicName::from_checked(unsafe { ByteString::from_bytes_unchecked(shared) }))
        }
    }

    /// A UTF-8 Encoded String [MQTT-1.5.4]: valid UTF-8 (so no surrogates)
    /// [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries_of_table_1_5_5() {
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(value, bytes) in cases {
            assert_eq!(peek_var_int(bytes), Ok(Some((value, bytes.len()))));
            assert_eq!(var_int_len(value), bytes.len());
            let mut buf = BytesMut::new();
            put_var_int(&mut buf, value);
            assert_eq!(&buf[..], bytes);
        }
    }

    #[test]
    fn var_int_incomplete_and_malformed() {
        assert_eq!(peek_var_int(&[]), Ok(None));
        assert_eq!(peek_var_int(&[0x80, 0x80]), Ok(None));
        assert_eq!(peek_var_int(&[0x80, 0x80, 0x80, 0x80]), Err(DecodeError::MalformedVarInt));
        assert_eq!(peek_var_int(&[0x80, 0x00]), Err(DecodeError::MalformedVarInt));
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03abc\x00\x02\xC3\xA9"));
        assert_eq!(&*r.string().unwrap(), "abc");
        assert_eq!(&*r.string().unwrap(), "é");
        assert!(r.finish().is_ok());
        let mut r = Reader::new(Bytes::from_static(b"\x00\x02a\x00"));
        assert_eq!(r.string(), Err(DecodeError::NullCharacter));
        // U+D800 encoded as UTF-8 is a surrogate and invalid [MQTT-1.5.4-1].
        let mut r = Reader::new(Bytes::from_static(b"\x00\x03\xED\xA0\x80"));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(b"\x00\x05ab"));
        assert_eq!(r.string(), Err(DecodeError::Truncated));
    }

    /// The word-at-a-time scan agrees with a byte-by-byte one for every
    /// length up to three words and every position of every special byte.
    #[test]
    fn topic_scan_finds_each_special_byte_at_each_position() {
        let naive = |bytes: &[u8]| TopicScan {
            nul: bytes.contains(&0),
            wildcard: bytes.iter().any(|&b| b == b'+' || b == b'#'),
            ascii: bytes.is_ascii(),
        };
        for len in 0..=24 {
            let clean = vec![b'a'; len];
            assert_eq!(TopicScan::of(&clean), naive(&clean), "clean, length {len}");
            // Bytes next to the special ones that must not trigger: '*' and
            // '$' differ from '+' and '#' in one bit, 0x7F is the top ASCII.
            for special in [0u8, b'+', b'#', 0x80, 0xC3, 0xFF, b'*', b'$', 0x7F, 0x01] {
                for at in 0..len {
                    let mut bytes = clean.clone();
                    bytes[at] = special;
                    assert_eq!(
                        TopicScan::of(&bytes),
                        naive(&bytes),
                        "byte {special:#04x} at {at} of {len}"
                    );
                }
            }
        }
    }
}
