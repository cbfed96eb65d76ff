//! The ACL file: which topics each client may publish to (write), receive
//! (read) and subscribe to, in Mosquitto's `acl_file` syntax so that a
//! Mosquitto user's file works unchanged.
//!
//! ```text
//! # Before the first `user` line: anonymous clients (no user name).
//! topic read $SYS/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # Every client, whatever its user: %u is its user name, %c its client id.
//! pattern write devices/%c/state
//! ```
//!
//! * `topic [read|write|readwrite|deny] FILTER` grants (or denies) the
//!   filter to the current section: anonymous clients before the first
//!   `user NAME`, that user after it (sections of the same name merge).
//!   Without an access type, `readwrite`.
//! * `pattern [read|write|readwrite|deny] FILTER` applies to every client;
//!   a level that is exactly `%u` or `%c` stands for the client's user
//!   name or client id (Mosquitto: "The substitution pattern must be the
//!   only text for that level of hierarchy"). A pattern with `%u` does not
//!   apply to anonymous clients; a user name or client id containing `+`,
//!   `#` or `/` never stands in a pattern, as in Mosquitto 1.x: otherwise
//!   a client could pick the id `victim/x` and be granted
//!   `devices/victim/x/...` by `devices/%c/#`. (Mosquitto 2.0.18, checked,
//!   refuses only `+` and `#` and substitutes an id with `/`.)
//! * With an ACL file, what is not granted is denied. A `deny` rule that
//!   matches wins over every grant.
//! * A topic beginning with `$` (e.g. `$SYS/...`) is matched only by rules
//!   whose first level is that literal level, never by a wildcard there
//!   (as subscriptions, [MQTT-4.7.2-1]): `$SYS` is readable only if granted.
//!
//! What is checked (see the session): a PUBLISH needs `write` on its topic,
//! a delivery (retained ones included) `read` on its topic. A SUBSCRIBE
//! filter is granted when some `read` rule overlaps it (some topic could
//! be delivered through it) and no `deny` rule covers all of it; what it
//! then delivers is still checked message by message. So `#` by a client
//! with `read a/#` is granted and receives only `a/...`, and `b/#` is
//! refused (0x87 / 0x80) because nothing under it could ever arrive.
//! Mosquitto (2.0.18, checked) grants every subscription under an
//! `acl_file` and checks at delivery only; ringmq checks at delivery the
//! same way, and also tells the client at once when a filter can never
//! deliver anything, as the SUBACK codes allow (MQTT 5.0 §3.9.3: 0x87 Not
//! authorized; 3.1.1 [MQTT-3.9.3-2]: 0x80 Failure).
//!
//! The rules are compiled once per file load into tries (one per section
//! and one for the patterns); a client's [`ClientAcl`] points at its
//! section and keeps its user name for `%u`, so checking a topic walks two
//! tries with no allocation, and a reload swaps the file under every
//! client at once ([`ClientAcl::rebind`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a rule grants or denies, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    /// Nothing.
    const NONE: Self = Self(0);
    /// Receive messages published to the topic (and subscribe).
    pub const READ: Self = Self(1);
    /// Publish to the topic.
    pub const WRITE: Self = Self(2);
    /// `deny`: neither, whatever else grants it.
    const DENY: Self = Self(4);

    fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn contains(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether these bits (of every matching rule) let `wanted` through.
    fn allows(self, wanted: Self) -> bool {
        !self.contains(Self::DENY) && self.contains(wanted)
    }
}

/// One level of a rule's filter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    /// `+`
    Plus,
    /// `#` (always last)
    Hash,
    /// `%u` in a pattern
    User,
    /// `%c` in a pattern
    Client,
}

/// One `topic` or `pattern` line, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    levels: Box<[Level]>,
    access: Access,
}

/// A node of a section's trie: the rules whose filter leads here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    /// Rules whose filter ends at this node.
    exact: Access,
    /// Rules whose filter continues with `#` here: they match this level's
    /// topic and everything under it.
    multi: Access,
    literal: hashbrown::HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    user: Option<Box<Node>>,
    client: Option<Box<Node>>,
}

impl Node {
    fn insert(&mut self, levels: &[Level], access: Access) {
        let Some((level, rest)) = levels.split_first() else {
            self.exact = self.exact.union(access);
            return;
        };
        let child = match level {
            Level::Hash => {
                self.multi = self.multi.union(access);
                return;
            }
            Level::Literal(text) => self.literal.entry(text.clone()).or_default(),
            Level::Plus => self.plus.get_or_insert_with(Box::default),
            Level::User => self.user.get_or_insert_with(Box::default),
            Level::Client => self.client.get_or_insert_with(Box::default),
        };
        child.insert(rest, access);
    }

    /// The union of the access of every rule under this node matching the
    /// rest of the topic (`next` is its next level, `rest` the ones after).
    fn walk(
        &self,
        next: Option<&str>,
        rest: std::str::Split<'_, char>,
        first: bool,
        names: &Names<'_>,
    ) -> Access {
        let Some(level) = next else {
            // `a/#` matches `a` too.
            return self.exact.union(self.multi);
        };
        let mut access = Access::NONE;
        // [MQTT-4.7.2-1] no wildcard in the first level matches `$...`.
        let wildcards = !(first && level.starts_with('$'));
        if wildcards {
            access = access.union(self.multi);
            if let Some(plus) = &self.plus {
                access = access.union(descend(plus, rest.clone(), names));
            }
        }
        let substituted = [(&self.user, names.user), (&self.client, names.client)];
        for (node, name) in substituted {
            if let (Some(node), Some(name)) = (node, name) {
                if name == level {
                    access = access.union(descend(node, rest.clone(), names));
                }
            }
        }
        if let Some(child) = self.literal.get(level) {
            access = access.union(descend(child, rest, names));
        }
        access
    }
}

/// [`Node::walk`] one level down.
fn descend(node: &Node, mut rest: std::str::Split<'_, char>, names: &Names<'_>) -> Access {
    let next = rest.next();
    node.walk(next, rest, false, names)
}

/// The rules of one section (anonymous, one user, or the patterns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Section {
    trie: Node,
    /// The same rules as a list, for subscription checks (rare, and
    /// filter against filter is not a trie walk).
    rules: Vec<Rule>,
}

impl Section {
    fn add(&mut self, rule: Rule) {
        self.trie.insert(&rule.levels, rule.access);
        self.rules.push(rule);
    }

    fn check_topic(&self, topic: &str, names: &Names<'_>) -> Access {
        let mut levels = topic.split('/');
        let next = levels.next();
        self.trie.walk(next, levels, true, names)
    }
}

/// What `%u` and `%c` stand for, for one client; `None` where the rule
/// cannot apply (no user name, or a name that contains `+`, `#` or `/`).
struct Names<'a> {
    user: Option<&'a str>,
    client: Option<&'a str>,
}

impl<'a> Names<'a> {
    fn new(user: Option<&'a str>, client: &'a str) -> Self {
        let safe = |name: &'a str| (!name.contains(['+', '#', '/'])).then_some(name);
        Self { user: user.and_then(safe), client: safe(client) }
    }
}

/// A parsed ACL file; two are equal when they grant the same (a reload
/// of an unchanged file says so).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclFile {
    /// Index 0: anonymous clients; then one per user, in file order.
    sections: Vec<Section>,
    /// User name -> index into `sections`.
    users: hashbrown::HashMap<Box<str>, usize>,
    patterns: Section,
}

/// A line of an ACL file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, and how to fix it.
    pub reason: String,
}

/// The ACL file could not be loaded: one line naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("acl_file = {path:?}: cannot read it: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("acl_file {}:{}: {}", path.display(), problem.line, problem.reason)]
    Parse {
        /// The configured path.
        path: PathBuf,
        /// The line and what is wrong with it (not a `source`: the
        /// message already says it, on one line).
        problem: ParseError,
    },
}

impl AclFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|problem| LoadError::Parse { path: path.to_owned(), problem })
    }

    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut file = Self { sections: vec![Section::default()], ..Self::default() };
        let mut section = 0;
        for (number, line) in text.lines().enumerate() {
            let error = |reason: String| ParseError { line: number + 1, reason };
            let line = line.trim_end_matches('\r').trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim_start_matches([' ', '\t']);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a user name: `user NAME`".to_owned()));
                    }
                    let next = file.sections.len();
                    section = *file.users.entry(rest.into()).or_insert(next);
                    if section == next {
                        file.sections.push(Section::default());
                    }
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    let rule = parse_rule(keyword, rest, pattern).map_err(error)?;
                    match pattern {
                        true => file.patterns.add(rule),
                        false => file.sections[section].add(rule),
                    }
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?}: a line is `user NAME`, \
                         `topic [read|write|readwrite|deny] FILTER`, \
                         `pattern [read|write|readwrite|deny] FILTER` or a `#` comment"
                    )))
                }
            }
        }
        Ok(file)
    }

    /// How many users have a section of their own.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// How many `topic` and `pattern` rules the file has.
    pub fn rules(&self) -> usize {
        self.sections.iter().map(|s| s.rules.len()).sum::<usize>() + self.patterns.rules.len()
    }
}

/// Parses what follows `topic` or `pattern`: `[ACCESS] FILTER`.
fn parse_rule(keyword: &str, rest: &str, pattern: bool) -> Result<Rule, String> {
    let (access, filter) = match rest.split_once([' ', '\t']) {
        Some((access, filter)) => {
            let access = match access {
                "read" => Access::READ,
                "write" => Access::WRITE,
                "readwrite" => Access::READ.union(Access::WRITE),
                "deny" => Access::DENY,
                other => {
                    return Err(format!(
                        "unknown access {other:?}: use read, write, readwrite or deny \
                         (`{keyword} ACCESS FILTER`; a filter with spaces needs the access first)"
                    ))
                }
            };
            (access, filter.trim_start_matches([' ', '\t']))
        }
        None => (Access::READ.union(Access::WRITE), rest),
    };
    if filter.is_empty() {
        return Err(format!("`{keyword}` needs a topic filter: `{keyword} [ACCESS] FILTER`"));
    }
    let mut levels = Vec::new();
    let count = filter.split('/').count();
    for (at, level) in filter.split('/').enumerate() {
        levels.push(match level {
            "#" if at + 1 == count => Level::Hash,
            "+" => Level::Plus,
            "%u" if pattern => Level::User,
            "%c" if pattern => Level::Client,
            _ if level.contains(['+', '#']) => {
                return Err(format!(
                    "invalid filter {filter:?}: `+` and `#` stand alone in their level, `#` last"
                ))
            }
            _ if pattern && (level.contains("%u") || level.contains("%c")) => {
                return Err(format!(
                    "invalid pattern {filter:?}: `%u` and `%c` must be the whole level \
                     (e.g. `devices/%c/state`, not `devices/id-%c`)"
                ))
            }
            _ => Level::Literal(level.into()),
        });
    }
    Ok(Rule { levels: levels.into_boxed_slice(), access })
}

/// One client's view of the ACL file: its section and its names, checked
/// against on every publish, subscription and delivery. Cheap to check
/// (no allocation); made once per CONNECT.
#[derive(Clone)]
pub struct ClientAcl {
    file: Arc<AclFile>,
    /// The client's user name (kept for `%u` and for a reload).
    user: Option<Box<str>>,
    /// Its section in `file`: `None` for a user without one (only the
    /// patterns apply).
    section: Option<usize>,
}

impl ClientAcl {
    /// The user name the rules are for (`None`: anonymous).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The rules of `file` for a client with `user` (`None`: anonymous).
    pub fn new(file: Arc<AclFile>, user: Option<&str>) -> Self {
        let mut acl = Self { file, user: user.map(Into::into), section: None };
        acl.section = acl.find_section();
        acl
    }

    /// Switches to a reloaded file: checks from now on use its rules.
    pub fn rebind(&mut self, file: Arc<AclFile>) {
        self.file = file;
        self.section = self.find_section();
    }

    fn find_section(&self) -> Option<usize> {
        match &self.user {
            None => Some(0),
            Some(user) => self.file.users.get(&**user).copied(),
        }
    }

    fn names<'a>(&'a self, client_id: &'a str) -> Names<'a> {
        Names::new(self.user.as_deref(), client_id)
    }

    /// Whether the client may publish to `topic`.
    pub fn may_publish(&self, topic: &str, client_id: &str) -> bool {
        self.check_topic(topic, client_id).allows(Access::WRITE)
    }

    /// Whether the client may receive a message published to `topic`.
    pub fn may_receive(&self, topic: &str, client_id: &str) -> bool {
        self.check_topic(topic, client_id).allows(Access::READ)
    }

    fn check_topic(&self, topic: &str, client_id: &str) -> Access {
        let names = self.names(client_id);
        let own = self
            .section
            .map_or(Access::NONE, |at| self.file.sections[at].check_topic(topic, &names));
        own.union(self.file.patterns.check_topic(topic, &names))
    }

    /// Whether the client may subscribe to `filter` (without any
    /// `$share/NAME/` prefix): some `read` rule overlaps it and no `deny`
    /// rule covers it (see the module's documentation).
    pub fn may_subscribe(&self, filter: &str, client_id: &str) -> bool {
        let names = self.names(client_id);
        let own = self.section.map(|at| &self.file.sections[at].rules[..]).unwrap_or_default();
        let rules = || own.iter().chain(&self.file.patterns.rules);
        let readable = rules().any(|rule| {
            rule.access.contains(Access::READ)
                && overlaps(&rule.levels, filter.split('/'), true, &names)
        });
        readable
            && !rules().any(|rule| {
                rule.access.contains(Access::DENY)
                    && covers(&rule.levels, filter.split('/'), true, &names)
            })
    }
}

impl fmt::Debug for ClientAcl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAcl")
            .field("user", &self.user)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

/// A rule level as it applies to this client: `None` for a wildcard,
/// `Some(Err(()))` for a substitution that cannot apply.
fn literal<'a>(level: &'a Level, names: &Names<'a>) -> Option<Result<&'a str, ()>> {
    match level {
        Level::Literal(text) => Some(Ok(text)),
        Level::User => Some(names.user.ok_or(())),
        Level::Client => Some(names.client.ok_or(())),
        Level::Plus | Level::Hash => None,
    }
}

/// Whether some topic matches both the rule and the subscription filter.
fn overlaps(
    rule: &[Level],
    mut filter: std::str::Split<'_, char>,
    first: bool,
    names: &Names<'_>,
) -> bool {
    let next = filter.next();
    let Some((level, rest)) = rule.split_first() else {
        // `a` is matched by the filter `a/#` too.
        return next.is_none() || (next == Some("#") && filter.next().is_none());
    };
    let Some(wanted) = next else {
        // The filter ended: only a rule `.../#` matches its topic.
        return *level == Level::Hash;
    };
    let dollar = |text: &str| first && text.starts_with('$');
    match (literal(level, names), wanted) {
        (Some(Err(())), _) => false,
        // [MQTT-4.7.2-1] a first-level wildcard never matches `$...`.
        (Some(Ok(text)), "+" | "#") if dollar(text) => false,
        (None, _) if dollar(wanted) => false,
        (_, "#") => true,
        (None, _) if *level == Level::Hash => true,
        (Some(Ok(text)), _) if wanted != "+" && text != wanted => false,
        _ => overlaps(rest, filter, false, names),
    }
}

/// Whether every topic the subscription filter matches is matched by the
/// rule.
fn covers(
    rule: &[Level],
    mut filter: std::str::Split<'_, char>,
    first: bool,
    names: &Names<'_>,
) -> bool {
    let next = filter.next();
    let Some((level, rest)) = rule.split_first() else { return next.is_none() };
    if *level == Level::Hash {
        // `a/#` covers `a`, and anything under it but a first-level `$...`
        // name (a wildcard filter there does not match `$...` either).
        return next.is_none_or(|wanted| !(first && wanted.starts_with('$')));
    }
    let Some(wanted) = next else { return false };
    if wanted == "#" {
        return false;
    }
    match literal(level, names) {
        Some(Err(())) => false,
        Some(Ok(text)) => text == wanted && covers(rest, filter, false, names),
        None => !(first && wanted.starts_with('$')) && covers(rest, filter, false, names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str, user: Option<&str>) -> ClientAcl {
        ClientAcl::new(Arc::new(AclFile::parse(text).unwrap()), user)
    }

    fn error(text: &str) -> ParseError {
        AclFile::parse(text).expect_err("refused")
    }

    const FILE: &str = "\
# anonymous clients
topic read $SYS/broker/uptime
topic public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic read shared/+/news
topic write   inbox/bob

user bob
topic inbox/bob
topic deny #

# every client
pattern write devices/%c/state
pattern read users/%u/#
pattern deny devices/%c/locked
";

    #[test]
    fn sections_apply_to_their_clients() {
        let anonymous = acl(FILE, None);
        assert!(anonymous.may_receive("$SYS/broker/uptime", "c"));
        assert!(!anonymous.may_receive("$SYS/broker/load", "c"));
        assert!(anonymous.may_publish("public/x/y", "c"));
        assert!(anonymous.may_receive("public", "c"), "`a/#` matches `a`");
        assert!(!anonymous.may_publish("alice/x", "c"));
        let alice = acl(FILE, Some("alice"));
        assert!(alice.may_publish("alice/x", "c") && alice.may_receive("alice/x", "c"));
        assert!(!alice.may_publish("public/x", "c"), "the anonymous section is not hers");
        assert!(alice.may_receive("shared/a/news", "c"));
        assert!(!alice.may_publish("shared/a/news", "c"), "read only");
        assert!(!alice.may_receive("shared/a/b/news", "c"));
        assert!(alice.may_publish("inbox/bob", "c") && !alice.may_receive("inbox/bob", "c"));
        // Unknown users: the patterns only.
        let carol = acl(FILE, Some("carol"));
        assert!(!carol.may_publish("public/x", "c") && !carol.may_publish("alice/x", "c"));
        assert!(carol.may_receive("users/carol/inbox", "c"));
    }

    #[test]
    fn deny_wins_over_every_grant() {
        let alice = acl(FILE, Some("alice"));
        assert!(!alice.may_publish("alice/secret", "c") && !alice.may_receive("alice/secret", "c"));
        assert!(alice.may_publish("alice/secret/below", "c"), "deny matches its filter only");
        // Bob's `deny #` beats his own grant and the patterns.
        let bob = acl(FILE, Some("bob"));
        assert!(!bob.may_publish("inbox/bob", "c"));
        assert!(!bob.may_publish("devices/c/state", "c"));
        // A pattern's deny applies to everyone.
        let text = "topic devices/#\npattern deny devices/%c/locked";
        let anonymous = acl(text, None);
        assert!(anonymous.may_publish("devices/c/x", "c"));
        assert!(!anonymous.may_publish("devices/c/locked", "c"));
        assert!(anonymous.may_publish("devices/d/locked", "c"));
    }

    #[test]
    fn patterns_substitute_the_user_and_the_client_id() {
        let alice = acl(FILE, Some("alice"));
        assert!(alice.may_publish("devices/dev1/state", "dev1"));
        assert!(!alice.may_publish("devices/dev2/state", "dev1"));
        assert!(alice.may_receive("users/alice/a/b", "dev1"));
        assert!(!alice.may_receive("users/bob/a", "dev1"));
        // %u does not apply without a user name; %c does.
        let anonymous = acl(FILE, None);
        assert!(!anonymous.may_receive("users/%u/x", "c"));
        assert!(anonymous.may_publish("devices/c/state", "c"));
        // Names that would widen a rule never stand in it.
        assert!(!anonymous.may_publish("devices/+/state", "+"));
        let slash = acl(FILE, Some("a/b"));
        assert!(!slash.may_receive("users/a/b/x", "c"));
        // In `topic` lines, `%u` is literal text.
        let literal = acl("user u\ntopic read x/%u", Some("u"));
        assert!(literal.may_receive("x/%u", "c") && !literal.may_receive("x/u", "c"));
    }

    #[test]
    fn dollar_topics_need_a_rule_that_names_them() {
        // [MQTT-4.7.2-1] wildcards in the first level do not match `$...`.
        let everything = acl("topic #\ntopic +/x", None);
        assert!(everything.may_receive("a/b", "c"));
        assert!(!everything.may_receive("$SYS/broker/uptime", "c"));
        assert!(!everything.may_receive("$SYS/x", "c"));
        let sys = acl("topic read $SYS/#", None);
        assert!(sys.may_receive("$SYS/broker/uptime", "c"));
        assert!(!sys.may_publish("$SYS/broker/uptime", "c"));
    }

    #[test]
    fn subscriptions_need_a_readable_overlap_and_no_covering_deny() {
        let alice = acl(FILE, Some("alice"));
        let may = |filter: &str| alice.may_subscribe(filter, "dev1");
        assert!(may("alice/x") && may("alice/#") && may("alice/+/y"));
        // Something under `#` is readable: granted, checked at delivery.
        assert!(may("#") && may("+/x") && may("shared/#") && may("shared/+/+"));
        assert!(may("users/alice/#") && may("users/+/x"));
        // Nothing readable under these.
        assert!(!may("inbox/bob"), "write only");
        assert!(!may("elsewhere/#") && !may("shared/a/b/news") && !may("users/bob/#"));
        // `$...` only through a rule naming it.
        assert!(!may("$SYS/#"));
        assert!(acl(FILE, None).may_subscribe("#", "c"), "public/# is readable");
        assert!(acl(FILE, None).may_subscribe("$SYS/+/uptime", "c"));
        assert!(!acl("topic #", None).may_subscribe("$SYS/#", "c"));
        // A deny that covers the whole filter refuses it; one that covers
        // part of it does not (deliveries are checked).
        assert!(!may("alice/secret"));
        assert!(may("alice/+"));
        let bob = acl(FILE, Some("bob"));
        assert!(!bob.may_subscribe("inbox/bob", "c") && !bob.may_subscribe("#", "c"));
        let partial = acl("topic a/#\ntopic deny a/+/x", None);
        assert!(partial.may_subscribe("a/#", "c") && partial.may_subscribe("a/b", "c"));
        assert!(!partial.may_subscribe("a/b/x", "c") && !partial.may_subscribe("a/+/x", "c"));
        assert!(partial.may_subscribe("a/b/#", "c"));
        let all = acl("topic a/#\ntopic deny a/#", None);
        assert!(!all.may_subscribe("a", "c") && !all.may_subscribe("a/#", "c"));
    }

    #[test]
    fn overlap_and_cover_follow_the_matching_rules() {
        let names = Names::new(Some("u"), "c");
        let rule = |text: &str| parse_rule("pattern", text, true).unwrap().levels;
        let overlap = |r: &str, f: &str| overlaps(&rule(r), f.split('/'), true, &names);
        let cover = |r: &str, f: &str| covers(&rule(r), f.split('/'), true, &names);
        for (r, f, expected) in [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/+", true),
            ("a/b", "a/#", true),
            ("a", "a/#", true),
            ("a/#", "a", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("+/b", "a/+", true),
            ("#", "x/y/z", true),
            ("%u/x", "u/+", true),
            ("%u/x", "v/+", false),
            ("%c/#", "c", true),
            ("$SYS/#", "#", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/+", "$SYS/#", true),
        ] {
            assert_eq!(overlap(r, f), expected, "overlaps({r}, {f})");
        }
        for (r, f, expected) in [
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/#", "a/b/+", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("%u/#", "u/x", true),
            ("%u/#", "v/x", false),
        ] {
            assert_eq!(cover(r, f), expected, "covers({r}, {f})");
        }
    }

    #[test]
    fn mosquitto_syntax_details() {
        // Comments, blank lines, CRLF, repeated spaces, leading blanks.
        let text = "# c\r\n\r\n  topic   read   a/b\r\nuser  x y\r\ntopic z\nuser x y\ntopic w";
        let file = AclFile::parse(text).unwrap();
        assert_eq!((file.users(), file.rules()), (1, 3));
        let user = ClientAcl::new(Arc::new(file), Some("x y"));
        assert!(user.may_publish("z", "c") && user.may_publish("w", "c"), "sections merge");
        // A filter with spaces after the access type.
        assert!(acl("topic read a b/c", None).may_receive("a b/c", "c"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_the_fix() {
        let bad = error("topic a\nuser\n");
        assert_eq!(bad.line, 2);
        assert!(bad.reason.contains("`user NAME`"), "{}", bad.reason);
        assert!(error("topic rw a/b").reason.contains("use read, write, readwrite or deny"));
        assert!(error("topic").reason.contains("needs a topic filter"));
        assert!(error("topic read ").reason.contains("needs a topic filter"));
        assert!(error("topic a/#/b").reason.contains("`#` last"));
        assert!(error("topic a/b+").reason.contains("stand alone"));
        assert!(error("pattern x/id-%c").reason.contains("must be the whole level"));
        assert!(error("topics a").reason.contains("unknown keyword \"topics\""));
        let loaded = AclFile::load(Path::new("/nonexistent/acl")).unwrap_err().to_string();
        assert!(loaded.starts_with("acl_file = \"/nonexistent/acl\": cannot read it"), "{loaded}");
        let dir = std::env::temp_dir().join(format!("ringmq-acl-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acl");
        std::fs::write(&path, "topic a\n\ntopic blah a/b\n").unwrap();
        let loaded = AclFile::load(&path).unwrap_err().to_string();
        let expected = format!("acl_file {}:3: unknown access \"blah\"", path.display());
        assert!(loaded.starts_with(&expected), "{loaded}");
        assert!(!loaded.contains('\n'));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_rebound_client_uses_the_new_rules() {
        let mut alice = acl("user alice\ntopic a", Some("alice"));
        assert!(alice.may_publish("a", "c"));
        alice.rebind(Arc::new(AclFile::parse("user alice\ntopic b").unwrap()));
        assert!(!alice.may_publish("a", "c") && alice.may_publish("b", "c"));
        alice.rebind(Arc::new(AclFile::parse("topic a").unwrap()));
        assert!(!alice.may_publish("a", "c"), "her section is gone");
    }
}
