//! MQTT topic names and filters as NATS subjects: sans-IO, no allocation
//! beyond the output string.
//!
//! NATS subjects are tokens joined by `.`; a token is non-empty, `*` and
//! `>` as whole tokens are wildcards, and whitespace is not allowed. MQTT
//! levels may hold any of those (and be empty, and be any UTF-8), so each
//! level is encoded into one token:
//!
//! * the bytes `A-Z a-z 0-9 -` stand for themselves;
//! * every other byte (`_` included) is `_` and two upper-case hex digits
//!   (`.` is `_2E`, ` ` is `_20`, `é` is `_C3_A9`);
//! * the empty level is the token `_` alone (no other level encodes to it:
//!   elsewhere `_` is always followed by two hex digits).
//!
//! A subject is `{prefix}.{space}.{level}.{level}...`, where `{space}` is
//! `s` for topics whose first level starts with `$` and `t` for every other
//! topic. The space token keeps MQTT's rule that a filter starting with a
//! wildcard does not match `$` topics [MQTT-4.7.2-1]: such a filter maps to
//! `{prefix}.t...`, which no `$` topic's subject starts with.
//!
//! The encoding is injective: tokens never contain `.`, each level's token
//! decodes back to exactly that level (the escapes are prefix-free), and
//! the space token is a function of the first level.
//!
//! A filter maps to one NATS subscription, or two when it ends in `#`:
//! `+` is `*`, and `a/#` is `a.>` (one level or more below `a`) plus `a`
//! itself, since `a/#` also matches `a` [MQTT-4.7.1-2]. A filter that is
//! `#` alone needs no second subscription (every topic has a level).
//!
//! Subjects longer than [`MAX_SUBJECT_LEN`] are not used: the NATS server
//! refuses a protocol line longer than its `max_control_line` (4 KiB by
//! default) and closes the connection, so such topics stay on their node.

/// The longest subject the bridge publishes to or subscribes to. A PUB
/// line is `PUB {subject} {size}\r\n`, and NATS servers refuse lines over
/// 4096 bytes by default.
pub const MAX_SUBJECT_LEN: usize = 3072;

/// Whether a byte stands for itself in a token.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-'
}

/// Appends the token of the MQTT level `level` to `out`.
fn push_level(level: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if level.is_empty() {
        out.push('_');
        return;
    }
    for &byte in level.as_bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
}

/// The space token of a topic or filter whose first level is `first`.
fn space(first: &str) -> &'static str {
    if first.starts_with('$') {
        "s"
    } else {
        "t"
    }
}

/// Writes the subject of the MQTT topic name `topic` under `prefix` into
/// `out` (cleared first). Returns false, with `out` unspecified, when the
/// subject would be longer than [`MAX_SUBJECT_LEN`].
pub fn topic_subject(prefix: &str, topic: &str, out: &mut String) -> bool {
    out.clear();
    out.push_str(prefix);
    out.push('.');
    out.push_str(space(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(level, out);
        if out.len() > MAX_SUBJECT_LEN {
            return false;
        }
    }
    true
}

/// The NATS subscriptions of the MQTT topic filter `filter` (without a
/// `$share/` prefix) under `prefix`: one, or two for a filter ending in
/// `/#`. `None` when a subject would be longer than [`MAX_SUBJECT_LEN`].
pub fn filter_subjects(prefix: &str, filter: &str) -> Option<smallvec::SmallVec<[String; 2]>> {
    let mut subject = String::with_capacity(prefix.len() + 3 + filter.len());
    subject.push_str(prefix);
    subject.push('.');
    subject.push_str(space(filter));
    let mut parent = None;
    for level in filter.split('/') {
        match level {
            "+" => subject.push_str(".*"),
            "#" => {
                // `a/#` also matches `a` [MQTT-4.7.1-2]; `#` alone matches
                // every topic, all of which have a first level.
                if subject.len() > prefix.len() + 2 {
                    parent = Some(subject.clone());
                }
                subject.push_str(".>");
            }
            level => {
                subject.push('.');
                push_level(level, &mut subject);
            }
        }
        if subject.len() > MAX_SUBJECT_LEN {
            return None;
        }
    }
    let mut subjects = smallvec::SmallVec::new();
    subjects.push(subject);
    subjects.extend(parent);
    Some(subjects)
}

/// The MQTT topic name of a subject made by [`topic_subject`]: the inverse
/// that proves the encoding injective (and names the topic of a retained
/// message's key, see `retained`).
pub(super) fn decode_topic(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (space_token, levels) = rest.split_once('.')?;
    let mut topic = Vec::new();
    for (i, token) in levels.split('.').enumerate() {
        if i > 0 {
            topic.push(b'/');
        }
        if token == "_" {
            continue;
        }
        let bytes = token.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'_' {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                topic.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            } else if is_plain(bytes[at]) {
                topic.push(bytes[at]);
                at += 1;
            } else {
                return None;
            }
        }
    }
    let topic = String::from_utf8(topic).ok()?;
    (space(&topic) == space_token).then_some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic_matches;
    use proptest::prelude::*;

    const PREFIX: &str = "ringmq";

    /// NATS subject matching as the NATS documentation describes it
    /// ("Subject-Based Messaging"): tokens are separated by `.`; `*` in a
    /// subscription matches exactly one token; `>` matches one or more
    /// tokens and only as the last token.
    pub(crate) fn nats_matches(subscription: &str, subject: &str) -> bool {
        let mut subject = subject.split('.');
        let mut pattern = subscription.split('.').peekable();
        while let Some(token) = pattern.next() {
            if token == ">" {
                assert!(pattern.peek().is_none(), "'>' is the last token");
                return subject.next().is_some();
            }
            match subject.next() {
                Some(have) if token == "*" || token == have => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    fn subject(topic: &str) -> String {
        let mut out = String::new();
        assert!(topic_subject(PREFIX, topic, &mut out));
        out
    }

    fn subjects(filter: &str) -> Vec<String> {
        filter_subjects(PREFIX, filter).unwrap().into_vec()
    }

    #[test]
    fn documented_examples() {
        assert_eq!(subject("a/b"), "ringmq.t.a.b");
        assert_eq!(subject("a.b/c d/*/>"), "ringmq.t.a_2Eb.c_20d._2A._3E");
        assert_eq!(subject("/"), "ringmq.t._._");
        assert_eq!(subject("x_y/é"), "ringmq.t.x_5Fy._C3_A9");
        assert_eq!(subject("$SYS/broker"), "ringmq.s._24SYS.broker");
        assert_eq!(subjects("a/+/c"), ["ringmq.t.a.*.c"]);
        assert_eq!(subjects("a/#"), ["ringmq.t.a.>", "ringmq.t.a"]);
        assert_eq!(subjects("#"), ["ringmq.t.>"]);
        assert_eq!(subjects("+/#"), ["ringmq.t.*.>", "ringmq.t.*"]);
        assert_eq!(subjects("$SYS/#"), ["ringmq.s._24SYS.>", "ringmq.s._24SYS"]);
    }

    #[test]
    fn wildcards_at_the_first_level_skip_dollar_topics() {
        // [MQTT-4.7.2-1]
        for filter in ["#", "+/broker", "+/#"] {
            assert!(!subjects(filter).iter().any(|s| nats_matches(s, &subject("$SYS/broker"))));
        }
    }

    #[test]
    fn too_long_subjects_are_refused() {
        let long = "é".repeat(MAX_SUBJECT_LEN / 4);
        assert!(!topic_subject(PREFIX, &long, &mut String::new()));
        assert!(filter_subjects(PREFIX, &format!("{long}/#")).is_none());
        assert!(topic_subject(PREFIX, &"a".repeat(MAX_SUBJECT_LEN - 20), &mut String::new()));
    }

    /// A level of a topic name: any of the characters NATS tokens cannot
    /// hold, `$`, non-ASCII, and empty levels.
    fn level() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a_.*> $é\\-0-9\u{1F600}]{0,3}").unwrap()
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    /// A filter: levels that are literal, `+`, or (last only) `#`.
    fn filter() -> impl Strategy<Value = String> {
        let part = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
        (proptest::collection::vec(part, 1..5), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encoding_is_injective(a in topic(), b in topic()) {
            let (sa, sb) = (subject(&a), subject(&b));
            prop_assert_eq!(decode_topic(PREFIX, &sa), Some(a.clone()));
            prop_assert_eq!(a == b, sa == sb);
        }

        #[test]
        fn subjects_are_valid_nats_subjects(topic in topic(), filter in filter()) {
            let valid_token = |t: &str| !t.is_empty() && !t.contains([' ', '\t', '\r', '\n']);
            prop_assert!(subject(&topic).split('.').all(|t| valid_token(t) && t != "*" && t != ">"));
            for s in subjects(&filter) {
                prop_assert!(s.split('.').all(valid_token));
            }
        }

        #[test]
        fn a_filter_matches_exactly_when_its_subscriptions_do(
            filter in filter(),
            topic in topic(),
        ) {
            let nats = subjects(&filter).iter().any(|s| nats_matches(s, &subject(&topic)));
            prop_assert_eq!(topic_matches(&filter, &topic), nats, "{} {}", filter, topic);
        }

        /// Random topics rarely match random filters: also check topics
        /// made from the filter itself (wildcards filled in).
        #[test]
        fn a_filter_matches_its_own_instances(
            filter in filter(),
            fills in proptest::collection::vec(level(), 0..4),
            drop_hash in any::<bool>(),
        ) {
            let mut fill = fills.iter().cycle();
            let mut levels = Vec::new();
            for level in filter.split('/') {
                match level {
                    "+" => levels.push(fill.next().cloned().unwrap_or_default()),
                    "#" if drop_hash => {}
                    "#" => levels.extend(fills.iter().cloned().chain(["x".to_owned()])),
                    level => levels.push(level.to_owned()),
                }
            }
            prop_assume!(!levels.is_empty());
            let topic = levels.join("/");
            let nats = subjects(&filter).iter().any(|s| nats_matches(s, &subject(&topic)));
            prop_assert_eq!(topic_matches(&filter, &topic), nats, "{} {}", filter, topic);
        }
    }
}
