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
        // Each mask has a high bit set in a byte that matched (exactly
        // when one did: see `zero_bytes`).
        let (mut nul, mut wildcard, mut high) = (0u64, 0u64, 0u64);
        let mut step = |word: u64| {
            nul |= Self::zero_bytes(word);
            wildcard |= Self::zero_bytes(word ^ (Self::ONES * u64::from(b'+')))
                | Self::zero_bytes(word ^ (Self::ONES * u64::from(b'#')));
            high |= word;
        };
        if let Some(last) = bytes.len().checked_sub(8) {
            let mut at = 0;
            while at < last {
                step(Self::word(bytes, at));
                at += 8;
            }
            // The last eight bytes, overlapping bytes already seen.
            step(Self::word(bytes, last));
        } else {
            // Padded with a byte that triggers nothing.
            let mut short = [b'a'; 8];
            short[..bytes.len()].copy_from_slice(bytes);
            step(u64::from_ne_bytes(short));
        }
        Self { nul: nul != 0, wildcard: wildcard != 0, ascii: high & Self::HIGH_BITS == 0 }
    }

    /// The eight bytes at `at`.
    #[inline(always)]
    fn word(bytes: &[u8], at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_ne_bytes(word)
    }

    /// Non-zero exactly when a byte of `word` is zero (the borrow into a
    /// byte above a zero byte only matters when there is a zero byte).
    #[inline(always)]
    fn zero_bytes(word: u64) -> u64 {
        word.wrapping_sub(Self::ONES) & !word & Self::HIGH_BITS
    }
}

/// The topic name of a PUBLISH at offset `at` of `frame`, and the offset
/// after it: a UTF-8 Encoded String with the checks of [`Reader::string`]
/// and no wildcard character [MQTT-3.3.2-2]. It may be empty; whether a
/// Topic Alias allows that is for the caller.
///
/// This is the hot path of every PUBLISH, so it reads the frame in place
/// rather than through a [`Reader`]: one pass, eight bytes at a time, finds
/// U+0000, wildcards and non-ASCII bytes (an ASCII name needs no UTF-8
/// validation), and a short name is copied into the [`TopicName`] rather
/// than sharing the buffer.
///
/// The NUL and UTF-8 checks repeat those of [`Reader::string`] on purpose:
/// sharing them through a helper measured 5-8% slower on
/// `decode-packets/publish_v311_16B` in two builds (plain and with aligned
/// functions), so this path keeps its own copy.
#[inline]
pub(crate) fn topic_name_at(frame: &Bytes, at: usize) -> Result<(TopicName, usize), DecodeError> {
    let Some(&[high, low]) = frame.get(at..at + 2) else { return Err(DecodeError::Truncated) };
    let (start, len) = (at + 2, usize::from(u16::from_be_bytes([high, low])));
    let end = start + len;
    let Some(raw) = frame.get(start..end) else { return Err(DecodeError::Truncated) };
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
    let name = if len <= TopicName::INLINE_CAPACITY {
        match frame.get(start..start + TopicName::INLINE_CAPACITY) {
            // A copy of fixed size stays in registers on its way into the
            // packet; a copy of `len` bytes goes through the stack.
            // SAFETY: its first `len` bytes are `text`, checked above.
            Some(window) => unsafe {
                TopicName::inline_window(len, window.try_into().expect("INLINE_CAPACITY bytes"))
            },
            None => TopicName::inline(text),
        }
    } else {
        // SAFETY: the same bytes were just validated as `text`.
        TopicName::from_checked(unsafe {
            ByteString::from_bytes_unchecked(frame.slice(start..end))
        })
    };
    Ok((name, end))
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
    pub(crate) fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Binary Data: a Two Byte length and that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String [MQTT-1.5.4]: valid UTF-8 (so no surrogates)
    /// [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        let scan = TopicScan::of(&bytes);
        if scan.nul {
            return Err(DecodeError::NullCharacter);
        }
        if !scan.ascii {
            std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        }
        // SAFETY: the bytes are ASCII, or were just validated as UTF-8.
        Ok(unsafe { ByteString::from_bytes_unchecked(bytes) })
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

    /// A short name is copied with or without the bytes that follow it in
    /// the packet (a fixed-size window when the packet has them); either
    /// way it is the same name, equal, ordered and hashed by its text only.
    #[test]
    fn topic_names_are_the_same_whatever_follows_them() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        for len in [0, 1, 7, 8, 9, 31, TopicName::INLINE_CAPACITY, TopicName::INLINE_CAPACITY + 1] {
            let name = "n".repeat(len);
            let decoded: Vec<(TopicName, usize)> = [0, 1, 40, 64]
                .into_iter()
                .map(|trailing| {
                    let mut frame = (len as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(name.as_bytes());
                    frame.extend((0..trailing).map(|i| i as u8));
                    topic_name_at(&Bytes::from(frame), 0).unwrap()
                })
                .collect();
            for (topic, end) in &decoded {
                assert_eq!((topic.as_str(), *end), (name.as_str(), 2 + len));
                assert_eq!(topic, &decoded[0].0);
                assert_eq!(topic.cmp(&decoded[0].0), std::cmp::Ordering::Equal);
                assert_eq!(hasher.hash_one(topic), hasher.hash_one(&decoded[0].0));
            }
        }
    }

    #[test]
    fn topic_name_checks() {
        let at = |bytes: &'static [u8]| topic_name_at(&Bytes::from_static(bytes), 0);
        assert_eq!(at(b"\x00\x03a/b").map(|(t, end)| (t.to_string(), end)), Ok(("a/b".into(), 5)));
        assert_eq!(at(b"\x00\x03a\x00b"), Err(DecodeError::NullCharacter));
        assert_eq!(
            at(b"\x00\x03a/+"),
            Err(DecodeError::InvalidTopicName(TopicError::WildcardInName))
        );
        assert_eq!(at(b"\x00\x02\xC3\xA9").map(|(t, _)| t.to_string()), Ok("\u{e9}".into()));
        assert_eq!(at(b"\x00\x03\xED\xA0\x80"), Err(DecodeError::InvalidUtf8));
        assert_eq!(at(b"\x00\x05ab"), Err(DecodeError::Truncated));
        assert_eq!(at(b"\x00"), Err(DecodeError::Truncated));
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
