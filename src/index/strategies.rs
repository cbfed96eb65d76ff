//! Proptest strategies for topic names and filters over a small alphabet,
//! so random filters and topics often match: shared by the property tests
//! of the trie and of the retained store.

use proptest::prelude::*;

/// Levels to build random filters and topics from (`$s` starts a `$`
/// topic when first, `""` is an empty level).
pub(crate) fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "$s", ""])
}

/// A topic name of 1 to 4 levels.
pub(crate) fn topic_text() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic is not empty", |text| !text.is_empty())
}

/// A filter of up to 4 levels with `+` among them, often ending in `#`.
pub(crate) fn plain_filter_text() -> impl Strategy<Value = String> {
    let part = prop_oneof![3 => level(), 1 => Just("+")];
    (prop::collection::vec(part, 0..5), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("a filter is not empty", |text| !text.is_empty())
}

/// A [`plain_filter_text`], sometimes as a shared subscription of one of
/// two groups.
pub(crate) fn filter_text() -> impl Strategy<Value = String> {
    (plain_filter_text(), prop::option::of(0u8..2)).prop_map(|(text, share)| match share {
        Some(group) => format!("$share/g{group}/{text}"),
        None => text,
    })
}
