//! Topic names and topic filters [MQTT-4.7], as newtypes that can only be
//! built by validating, and the matching rule between them.

use bytestring::ByteString;
use std::fmt;

/// Why a string is not a valid topic name or filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// A topic name contains no wildcard characters [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character")]
    WildcardInName,
    /// `#` is the last character of a filter and alone in its level
    /// [MQTT-4.7.1-2].
    #[error("'#' is not alone in the last level of the filter")]
    MisplacedMultiLevelWildcard,
    /// `+` occupies a whole level of a filter [MQTT-4.7.1-3].
    #[error("'+' does not occupy a whole level of the filter")]
    MisplacedSingleLevelWildcard,
    /// A share name is at least one character, without `/`, `+` or `#`
    /// [MQTT-4.8.2-1], and is followed by `/` and a topic filter
    /// [MQTT-4.8.2-2].
    #[error("shared subscription is not of the form $share/{{ShareName}}/{{filter}}")]
    InvalidSharedSubscription,
    /// Topics are UTF-8 strings of at most 65,535 bytes [MQTT-4.7.3-3].
    #[error("topic is longer than 65535 bytes")]
    TooLong,
}

/// A topic name: the topic a PUBLISH is sent to.
///
/// Invariant: no `+` or `#`, at most 65,535 bytes, and not empty - except
/// the name of a v5 PUBLISH that carries a Topic Alias, which may be empty
/// until the session resolves the alias (MQTT 5.0 section 3.3.2.3.4).
///
/// Names of up to [`TopicName::INLINE_CAPACITY`] bytes are stored inline;
/// longer ones share the buffer they were read from. Equality, ordering
/// and hashing are those of the text, whichever the storage.
#[derive(Clone)]
pub struct TopicName(Repr);

/// The storage of a [`TopicName`].
#[derive(Clone)]
enum Repr {
    /// A short name, copied: decoding it, cloning it into each delivery and
    /// dropping it touch no reference count (two atomic operations per
    /// copy, measured as a fifth of decoding a small PUBLISH).
    Inline { len: u8, bytes: [u8; TopicName::INLINE_CAPACITY] },
    /// A longer name, sharing its buffer.
    Shared(ByteString),
}

impl TopicName {
    /// The longest name stored inline: a `TopicName` is then 40 bytes, 8
    /// more than a shared string alone.
    pub const INLINE_CAPACITY: usize = 38;

    /// Validates `name` as a topic name.
    pub fn new(name: impl Into<ByteString>) -> Result<Self, TopicError> {
        let name = name.into();
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        Self::check(&name)?;
        Ok(Self::from_checked(name))
    }

    /// A name the decoder has already checked: at most 65,535 bytes (its
    /// length prefix is two bytes) and free of wildcards.
    #[inline]
    pub(crate) fn from_checked(name: ByteString) -> Self {
        debug_assert!(Self::check(&name).is_ok(), "{name:?} is not a valid topic name");
        if name.len() <= Self::INLINE_CAPACITY {
            Self::inline(&name)
        } else {
            Self(Repr::Shared(name))
        }
    }

    /// A checked name of at most [`Self::INLINE_CAPACITY`] bytes, copied.
    #[inline]
    pub(crate) fn inline(name: &str) -> Self {
        debug_assert!(Self::check(name).is_ok(), "{name:?} is not a valid topic name");
        let mut bytes = [0; Self::INLINE_CAPACITY];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        // The capacity is below 256, and the callers check the length.
        Self(Repr::Inline { len: name.len() as u8, bytes })
    }

    /// A checked name made of the first `len` bytes of `window`, copied
    /// whole: the bytes after the name are kept but never read (the name's
    /// text, equality, order and hash use `len` bytes only).
    ///
    /// # Safety
    /// `window[..len]` is valid UTF-8, checked as a topic name, and `len`
    /// is at most [`Self::INLINE_CAPACITY`].
    #[inline]
    pub(crate) unsafe fn inline_window(len: usize, window: &[u8; Self::INLINE_CAPACITY]) -> Self {
        debug_assert!(std::str::from_utf8(&window[..len]).is_ok_and(|n| Self::check(n).is_ok()));
        Self(Repr::Inline { len: len as u8, bytes: *window })
    }

    /// A name that may be empty: only for a v5 PUBLISH whose Topic Alias
    /// supplies the name. Tests build such packets with it; the decoder
    /// checks the alias itself.
    #[cfg(test)]
    pub(crate) fn new_aliased(name: ByteString) -> Result<Self, TopicError> {
        Self::check(&name)?;
        Ok(Self::from_checked(name))
    }

    fn check(name: &str) -> Result<(), TopicError> {
        if name.len() > u16::MAX as usize {
            return Err(TopicError::TooLong);
        }
        if name.bytes().any(|b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(())
    }

    /// The name as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: `Self::inline` copies the `len` bytes of a `&str`,
            // `Self::inline_window` requires its first `len` bytes to be
            // UTF-8, and they are never changed.
            // (Validating here would cost a pass over the name at each use.)
            Repr::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            Repr::Shared(name) => name,
        }
    }

    /// Whether this is the empty name of an aliased v5 PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// Topics beginning with `$` are reserved for the server [MQTT-4.7.2].
    pub fn is_system(&self) -> bool {
        self.as_str().starts_with('$')
    }
}

impl PartialEq for TopicName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for TopicName {}

impl std::hash::Hash for TopicName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for TopicName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TopicName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const SHARE_PREFIX: &str = "$share/";

/// A topic filter: what a SUBSCRIBE or UNSUBSCRIBE names. It may be a shared
/// subscription, `$share/{ShareName}/{filter}` [MQTT-4.8.2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    /// The whole filter as sent, `$share/` prefix included.
    text: ByteString,
    /// For a shared subscription, the byte offset where the inner filter
    /// starts (after `$share/{ShareName}/`); 0 otherwise.
    filter_start: u16,
}

impl TopicFilter {
    /// Validates `filter` as a topic filter.
    pub fn new(filter: impl Into<ByteString>) -> Result<Self, TopicError> {
        let text = filter.into();
        if text.is_empty() {
            return Err(TopicError::Empty);
        }
        if text.len() > u16::MAX as usize {
            return Err(TopicError::TooLong);
        }
        // The first byte is tested first: a memcmp call per filter shows.
        let shared = text.starts_with('$') && text.starts_with(SHARE_PREFIX);
        let filter_start = match shared.then(|| &text[SHARE_PREFIX.len()..]) {
            Some(rest) => {
                let group_len = rest.find('/').ok_or(TopicError::InvalidSharedSubscription)?;
                let group = &rest[..group_len];
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(TopicError::InvalidSharedSubscription);
                }
                if rest.len() == group_len + 1 {
                    return Err(TopicError::InvalidSharedSubscription);
                }
                SHARE_PREFIX.len() + group_len + 1
            }
            None => 0,
        };
        check_filter_levels(&text[filter_start..])?;
        // The length was checked against u16::MAX above.
        let filter_start = filter_start as u16;
        Ok(Self { text, filter_start })
    }

    /// The filter as sent, `$share/{ShareName}/` prefix included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A copy in its own allocation. The filter of a decoded SUBSCRIBE
    /// shares the packet's read buffer: a long-lived map, or a delta sent
    /// to other cores, keeps a detached copy so as not to keep that whole
    /// buffer alive.
    pub fn detached(&self) -> Self {
        Self { text: ByteString::from(self.as_str()), filter_start: self.filter_start }
    }

    /// The filter that topic names are matched against (without any
    /// `$share/{ShareName}/` prefix).
    pub fn filter(&self) -> &str {
        &self.text[self.filter_start as usize..]
    }

    /// The share name of a shared subscription.
    pub fn share_name(&self) -> Option<&str> {
        if self.filter_start == 0 {
            None
        } else {
            Some(&self.text[SHARE_PREFIX.len()..self.filter_start as usize - 1])
        }
    }

    /// Whether this is a shared subscription.
    pub fn is_shared(&self) -> bool {
        self.filter_start != 0
    }

    /// Whether the filter (share prefix aside) contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// Whether `name` matches this filter (the share prefix is ignored).
    pub fn matches(&self, name: &TopicName) -> bool {
        topic_matches(self.filter(), name.as_str())
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn check_filter_levels(filter: &str) -> Result<(), TopicError> {
    // One pass over the bytes, level by level ('/' is ASCII, so a level
    // boundary never falls inside a character).
    let bytes = filter.as_bytes();
    let (mut level_start, mut hash, mut plus) = (0, false, false);
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'#' => hash = true,
            b'+' => plus = true,
            _ => {}
        }
        let level_end = if byte == b'/' {
            at
        } else if at + 1 == bytes.len() {
            bytes.len()
        } else {
            continue;
        };
        let level = &bytes[level_start..level_end];
        // [MQTT-4.7.1-2] '#' alone, and in the last level.
        if hash && (level != b"#" || level_end != bytes.len()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        // [MQTT-4.7.1-3] '+' occupies an entire level.
        if plus && level != b"+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
        (level_start, hash, plus) = (at + 1, false, false);
    }
    Ok(())
}

/// Whether topic `name` matches topic `filter` (both already valid; the
/// filter without any share prefix).
///
/// A filter that starts with a wildcard does not match a name that starts
/// with `$` [MQTT-4.7.2-1]. `sport/#` also matches `sport`, the parent level
/// [MQTT-4.7.1-2 non-normative example].
pub fn topic_matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = name.split('/');
    let mut filters = filter.split('/');
    loop {
        match (filters.next(), names.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_inline_and_long_ones_shared() {
        let at_capacity = "a".repeat(TopicName::INLINE_CAPACITY);
        let above = "b".repeat(TopicName::INLINE_CAPACITY + 1);
        let inline = TopicName::new(at_capacity.clone()).unwrap();
        let shared = TopicName::new(above.clone()).unwrap();
        assert!(matches!(inline.0, Repr::Inline { .. }));
        assert!(matches!(shared.0, Repr::Shared(_)));
        assert_eq!(inline.as_str(), at_capacity);
        assert_eq!(shared.as_str(), above);
        assert_eq!(format!("{inline}"), at_capacity);
        assert_eq!(format!("{shared:?}"), format!("{above:?}"));
        assert_eq!(std::mem::size_of::<TopicName>(), 40);
    }

    #[test]
    fn equality_order_and_hash_follow_the_text() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let long = format!("{}/x", "c".repeat(TopicName::INLINE_CAPACITY));
        let names = ["a", "a/b", "b", "é/ü", long.as_str(), ""];
        for x in names {
            for y in names {
                let (nx, ny) = (
                    TopicName::new_aliased(ByteString::from(x)).unwrap(),
                    TopicName::new_aliased(ByteString::from(y)).unwrap(),
                );
                assert_eq!(nx == ny, x == y, "{x} == {y}");
                assert_eq!(nx.cmp(&ny), x.cmp(y), "{x} <=> {y}");
                if x == y {
                    assert_eq!(hasher.hash_one(&nx), hasher.hash_one(&ny));
                }
            }
        }
    }

    /// The one-pass level check agrees with checking the levels one by one,
    /// for every filter of up to seven bytes made of `a`, `/`, `+`, `#`.
    #[test]
    fn filter_level_check_matches_a_level_by_level_check() {
        fn by_levels(filter: &str) -> Result<(), TopicError> {
            let mut levels = filter.split('/').peekable();
            while let Some(level) = levels.next() {
                if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                    return Err(TopicError::MisplacedMultiLevelWildcard);
                }
                if level.contains('+') && level != "+" {
                    return Err(TopicError::MisplacedSingleLevelWildcard);
                }
            }
            Ok(())
        }
        let mut filters = vec![String::new()];
        for _ in 0..7 {
            filters = filters
                .iter()
                .flat_map(|f| ["a", "/", "+", "#"].map(|c| format!("{f}{c}")))
                .collect();
            for filter in &filters {
                assert_eq!(check_filter_levels(filter), by_levels(filter), "{filter:?}");
            }
        }
    }

    #[test]
    fn names() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert!(TopicName::new(" ").is_ok());
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("x".repeat(65536)), Err(TopicError::TooLong));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/b", "$SYS/#", "sport/tennis/#"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(TopicFilter::new("a#"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(TopicFilter::new("a/#/b"), Err(TopicError::MisplacedMultiLevelWildcard));
        assert_eq!(TopicFilter::new("a+"), Err(TopicError::MisplacedSingleLevelWildcard));
        assert_eq!(TopicFilter::new("a/b+/c"), Err(TopicError::MisplacedSingleLevelWildcard));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters() {
        let f = TopicFilter::new("$share/g1/a/+").unwrap();
        assert_eq!(f.share_name(), Some("g1"));
        assert_eq!(f.filter(), "a/+");
        assert!(f.is_shared());
        assert!(!TopicFilter::new("a/+").unwrap().is_shared());
        for bad in ["$share/", "$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/#/a"] {
            assert_eq!(TopicFilter::new(bad), Err(TopicError::InvalidSharedSubscription), "{bad}");
        }
        assert_eq!(TopicFilter::new("$share/g/a#"), Err(TopicError::MisplacedMultiLevelWildcard));
    }

    #[test]
    fn matching() {
        // Examples of MQTT 3.1.1 section 4.7.1.
        assert!(topic_matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(topic_matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(topic_matches("sport/#", "sport"));
        assert!(topic_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!topic_matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!topic_matches("sport/+", "sport"));
        assert!(topic_matches("sport/+", "sport/"));
        assert!(topic_matches("+/+", "/finance"));
        assert!(topic_matches("/+", "/finance"));
        assert!(!topic_matches("+", "/finance"));
        assert!(topic_matches("#", "a/b/c"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_do_not_match_leading_wildcards() {
        // [MQTT-4.7.2-1]
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
