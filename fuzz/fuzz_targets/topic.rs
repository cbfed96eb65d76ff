//! `topic`: `TopicName::new`, `TopicFilter::new` and `topic_matches` on
//! arbitrary strings.
//!
//! The input is split at its first `0xFF` byte (never part of UTF-8) into
//! two strings, read as UTF-8 with invalid sequences replaced; each is tried
//! as a name and as a filter, and the first is matched as a filter against
//! the second as a name. Nothing may panic, and:
//! * validation agrees with a plain reference reading of the rules
//!   [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] [MQTT-3.3.2-2]
//!   [MQTT-4.8.2-1] [MQTT-4.8.2-2];
//! * a valid name (not starting `$share/`) is also a valid filter without
//!   wildcards that matches itself;
//! * matching agrees with a reference matcher, including the rule that
//!   names starting with `$` are not matched by a leading wildcard
//!   [MQTT-4.7.2-1];
//! * replacing any level of a name with `+`, or any suffix of its levels
//!   with `#`, gives a filter that matches it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::protocol::{topic_matches, TopicError, TopicFilter, TopicName};

const SHARE_PREFIX: &str = "$share/";
/// Names up to this length get the `+` / `#` substitution checks, whose
/// cost grows with length times levels; longer ones add nothing new.
const MAX_SUBSTITUTED_LEN: usize = 256;

fn has_wildcard(s: &str) -> bool {
    s.contains(['+', '#'])
}

fn reference_name_error(s: &str) -> Option<TopicError> {
    if s.is_empty() {
        Some(TopicError::Empty)
    } else if s.len() > usize::from(u16::MAX) {
        Some(TopicError::TooLong)
    } else if has_wildcard(s) {
        Some(TopicError::WildcardInName)
    } else {
        None
    }
}

/// The part of a filter that names are matched against, if the share
/// prefix (when there is one) is well formed.
fn reference_inner_filter(s: &str) -> Option<&str> {
    let Some(rest) = s.strip_prefix(SHARE_PREFIX) else { return Some(s) };
    let (group, inner) = rest.split_once('/')?;
    (!group.is_empty() && !has_wildcard(group) && !inner.is_empty()).then_some(inner)
}

fn reference_filter_ok(s: &str) -> bool {
    if s.is_empty() || s.len() > usize::from(u16::MAX) {
        return false;
    }
    let Some(inner) = reference_inner_filter(s) else { return false };
    let levels: Vec<&str> = inner.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "+" => true,
        "#" => i + 1 == levels.len(),
        other => !has_wildcard(other),
    })
}

/// Matching level by level, written independently of the broker's.
fn reference_matches(filter: &str, name: &str) -> bool {
    fn levels(filter: &[&str], name: &[&str]) -> bool {
        match (filter.split_first(), name.split_first()) {
            // `#` matches the parent level and any number of child levels.
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, n))) => levels(f, n),
            (Some((f0, f)), Some((n0, n))) => f0 == n0 && levels(f, n),
            (None, None) => true,
            _ => false,
        }
    }
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    levels(&f, &n)
}

fn check_one(s: &str) {
    let name = TopicName::new(s);
    assert_eq!(name.as_ref().err().copied(), reference_name_error(s), "name {s:?}");
    let filter = TopicFilter::new(s);
    assert_eq!(filter.is_ok(), reference_filter_ok(s), "filter {s:?}: {filter:?}");

    if let Ok(filter) = &filter {
        assert_eq!(filter.as_str(), s);
        let inner = reference_inner_filter(s).expect("a valid filter has a valid share prefix");
        assert_eq!(filter.filter(), inner);
        assert_eq!(filter.is_shared(), filter.share_name().is_some());
        match filter.share_name() {
            Some(group) => assert_eq!(format!("{SHARE_PREFIX}{group}/{inner}"), s),
            None => assert_eq!(inner, s),
        }
        assert_eq!(filter.has_wildcards(), has_wildcard(inner));
    }

    if let Ok(name) = &name {
        assert_eq!(name.as_str(), s);
        assert_eq!(name.is_system(), s.starts_with('$'));
        assert!(!name.is_empty());
        if !s.starts_with(SHARE_PREFIX) {
            let filter = filter.as_ref().expect("a valid name is a valid filter");
            assert!(!filter.has_wildcards());
            assert!(filter.matches(name), "{s:?} does not match itself");
        }
        if s.len() <= MAX_SUBSTITUTED_LEN {
            check_substitutions(s);
        }
    }
}

/// Filters made from a valid name by wildcard substitution match it.
fn check_substitutions(name: &str) {
    let levels: Vec<&str> = name.split('/').collect();
    let dollar = name.starts_with('$');
    for i in 0..levels.len() {
        // A leading wildcard never matches a `$` name [MQTT-4.7.2-1].
        let expected = !(i == 0 && dollar);
        let mut plus = levels.clone();
        plus[i] = "+";
        let plus = plus.join("/");
        assert_eq!(topic_matches(&plus, name), expected, "{plus:?} vs {name:?}");
        let hash = if i == 0 { "#".to_owned() } else { format!("{}/#", levels[..i].join("/")) };
        assert_eq!(topic_matches(&hash, name), expected, "{hash:?} vs {name:?}");
        for filter in [&plus, &hash] {
            if !filter.starts_with(SHARE_PREFIX) {
                assert!(TopicFilter::new(filter.as_str()).is_ok(), "{filter:?}");
            }
        }
    }
    // `#` after the last level also matches the parent [MQTT-4.7.1-2].
    assert!(topic_matches(&format!("{name}/#"), name));
}

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let second = String::from_utf8_lossy(second);
    check_one(&first);
    check_one(&second);

    // Arbitrary, possibly invalid, strings never make the matcher panic.
    topic_matches(&first, &second);
    topic_matches(&second, &first);
    if let (Ok(filter), Ok(name)) = (TopicFilter::new(&*first), TopicName::new(&*second)) {
        assert_eq!(
            filter.matches(&name),
            reference_matches(filter.filter(), name.as_str()),
            "{filter:?} vs {name:?}"
        );
    }
});
