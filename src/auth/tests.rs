//! Tests of the password file: parsing, refusals with their line number,
//! verification of argon2id and Mosquitto `$7$` and `$6$` hashes, editing.

use super::*;

/// Written by Debian's `mosquitto_passwd -c -b FILE alice 's3cret pass'`
/// (mosquitto 2.0).
const MOSQUITTO_LINE: &str =
    "alice:$7$101$GSWvyLAvbmt1P0i5$yzQUrJcFXF8zJhHvUw6+hUh0d0fGKbHaeLQH4FAu\
GcFt2iciarLZvYISvuR5tb1MNYtFYz+JqBp8OtYf0i+sAg==";

fn error(text: &str) -> ParseError {
    PasswordFile::parse(text).expect_err("refused")
}

#[test]
fn argon2id_hashes_verify() {
    let mut file = PasswordFile::default();
    file.set_password("bob", b"hunter2").unwrap();
    let file = PasswordFile::parse(&file.to_text()).unwrap();
    assert_eq!(file.len(), 1);
    assert!(file.verify("bob", b"hunter2"));
    assert!(!file.verify("bob", b"hunter3"));
    assert!(!file.verify("eve", b"hunter2"));
}

#[test]
fn mosquitto_pbkdf2_hashes_verify() {
    let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    assert!(file.verify("alice", b"s3cret pass"));
    assert!(!file.verify("alice", b"s3cret pas"));
    // Written back unchanged.
    assert_eq!(file.to_text(), format!("{MOSQUITTO_LINE}\n"));
}

/// Written by Debian's `mosquitto_passwd -H sha512 -c -b FILE alice
/// alice-six` (mosquitto 2.0.18: `-H sha512` still writes the 1.x format).
const MOSQUITTO_SHA512_LINE: &str =
    "alice:$6$4pmw1hq9ea8yakBc$5RMW0nDHD7e4pM0dhcntgpi7vrmqmZmRTYsGw5qOA6sB\
ryMTFM+V7RVwMFxmsQaPsbtmfeHKC0QdxLIIHU6vaA==";

#[test]
fn mosquitto_sha512_hashes_verify() {
    let file = PasswordFile::parse(MOSQUITTO_SHA512_LINE).unwrap();
    assert!(file.verify("alice", b"alice-six"));
    assert!(!file.verify("alice", b"alice-six "));
    assert!(!file.verify("alice", b""));
    assert_eq!(file.to_text(), format!("{MOSQUITTO_SHA512_LINE}\n"));
    // Computed apart (Python: base64 of sha512(b"hunter2" + salt)), so the
    // order password-then-salt is checked by a second source.
    let python = "bob:$6$cmluZ21xLXNhbHQh$JccOf2kMmiozhQEiQd1QcA+z247AIzV6S+EwcPwAbfK0ZQqPoU9DJq35sI084YlnM5qucCFe8SrODBQBa5yRbg==";
    let file = PasswordFile::parse(python).unwrap();
    assert!(file.verify("bob", b"hunter2"));
    assert!(!file.verify("bob", b"hunter"));
}

#[test]
fn the_unknown_user_hash_is_a_valid_argon2id_hash() {
    assert!(matches!(parse_hash(UNKNOWN_USER_HASH), Ok(Hash::Argon2)));
}

#[test]
fn comments_blank_lines_and_crlf_are_accepted() {
    let text = format!("# users\n\n{MOSQUITTO_LINE}\r\n   \n");
    assert!(PasswordFile::parse(&text).unwrap().verify("alice", b"s3cret pass"));
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    let good = MOSQUITTO_LINE;
    assert_eq!(error(&format!("{good}\nno colon here")).line, 2);
    assert!(error("no colon").reason.contains("expected `user:hash`"));
    assert!(error(":$7$101$AAAA$AAAA").reason.contains("user name is empty"));
    assert!(error("a:plain").reason.contains("unknown hash format"));
    assert!(error("a:$6$salt$hash").reason.contains("`$6$`"));
    assert!(error("a:$6$c2FsdA==").reason.contains("expected `$6$salt$hash`"));
    assert!(error("a:$6$!!$AAAA").reason.contains("bad base64 salt"));
    assert!(error("a:$7$0$AAAA$AAAA").reason.contains("iterations"));
    assert!(error("a:$7$101$!!$AAAA").reason.contains("salt"));
    assert!(error("a:$7$101$AAAA").reason.contains("expected `$7$iterations$salt$hash`"));
    assert!(error("a:$argon2id$v=19$nonsense").reason.contains("invalid argon2"));
    assert!(error("a:$argon2i$v=19$m=19456,t=2,p=1$cmluZ21xLXVua25vd24$4N6oUE8pwVIzLSQfYN1N9Y/bo3qKbNMr1YW3mlmEcwQ")
        .reason
        .contains("use argon2id"));
    let twice = error(&format!("# x\n{good}\n{good}"));
    assert_eq!((twice.line, twice.reason.as_str()), (3, "user \"alice\" appears twice"));
}

#[test]
fn errors_never_show_the_hash() {
    let error = error("a:$7$101$c2FsdA==$bad!hash");
    assert!(!error.to_string().contains("bad!hash"), "{error}");
    assert_eq!(error.to_string(), "line 1: invalid `$7$` hash: bad base64 hash");
}

#[test]
fn load_errors_name_the_key_and_the_line() {
    let dir = std::env::temp_dir().join(format!("ringmq-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("passwd");
    std::fs::write(&path, "# x\nbroken\n").unwrap();
    let message = PasswordFile::load(&path).unwrap_err().to_string();
    assert_eq!(
        message,
        format!("password_file = {path:?}: line 2: expected `user:hash`, found no `:`")
    );
    let missing = PasswordFile::load(&dir.join("missing")).unwrap_err().to_string();
    assert!(missing.starts_with("password_file = ") && missing.contains("cannot read it"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn users_are_set_replaced_and_removed() {
    let mut file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    file.set_password("bob", b"one").unwrap();
    file.set_password("alice", b"two").unwrap();
    assert!(file.verify("alice", b"two"));
    assert!(file.set_password("a:b", b"x").is_err());
    assert!(file.remove("alice"));
    assert!(!file.remove("alice"));
    assert!(file.verify("bob", b"one"));
    assert!(file.to_text().starts_with("bob:$argon2id$v=19$m=19456,t=2,p=1$"));
}

#[test]
fn debug_shows_no_hash() {
    let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    assert_eq!(format!("{file:?}"), "PasswordFile { users: [\"alice\"] }");
}

#[test]
fn the_pool_answers_and_refuses_when_full() {
    let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    let verifier = pool::Verifier::start(file, 1, 1).unwrap();
    let right = verifier.verify("alice", b"s3cret pass").unwrap();
    assert!(futures_lite::future::block_on(right).is_some());
    let wrong = verifier.verify("alice", b"nope").unwrap();
    assert!(futures_lite::future::block_on(wrong).is_none());
    // One running plus one queued: more is refused until they finish.
    let pending: Vec<_> = (0..10).map(|_| verifier.verify("alice", b"x")).collect();
    assert!(pending.iter().any(|verdict| verdict.is_err()));
    for verdict in pending.into_iter().flatten() {
        assert!(futures_lite::future::block_on(verdict).is_none());
    }
}

#[test]
fn a_reload_revokes_the_users_it_removes_and_those_whose_password_changed() {
    let mut old = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    old.set_password("bob", b"one").unwrap();
    old.set_password("carol", b"three").unwrap();
    let mut new = old.clone();
    assert!(new.remove("alice"));
    new.set_password("bob", b"two").unwrap();
    new.set_password("dave", b"four").unwrap();
    let changes = old.changes_to(&new);
    assert_eq!((changes.added, changes.removed, changes.changed), (1, 1, 1));
    let mut revoked = changes.revoked;
    revoked.sort();
    assert_eq!(revoked, ["alice", "bob"], "carol is unchanged, dave is new");
    assert!(old.changes_to(&old.clone()).is_empty());
}

#[test]
fn shards_see_every_reload_that_revoked_users_once() {
    let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    let verifier = pool::Verifier::start(file.clone(), 1, 1).unwrap();
    assert_eq!(verifier.revoked_since(0), None);
    verifier.replace(file.clone(), Vec::new());
    assert_eq!(verifier.revoked_since(0), None, "nothing revoked, nothing to look at");
    verifier.replace(file.clone(), vec!["alice".to_owned()]);
    verifier.replace(file.clone(), vec!["bob".to_owned()]);
    // A shard that looked at neither gets both.
    assert_eq!(verifier.revoked_since(0), Some((2, vec!["alice".to_owned(), "bob".to_owned()])));
    // One that saw the first gets the second; one that saw both, nothing.
    assert_eq!(verifier.revoked_since(1), Some((2, vec!["bob".to_owned()])));
    assert_eq!(verifier.revoked_since(2), None);
}

/// A password checked against the file before a reload that revoked its
/// user is known as revoked afterwards; one checked after it, or of a user
/// the reload spared, is not.
#[test]
fn a_check_knows_the_reloads_that_revoked_its_user_after_it() {
    let mut old = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    old.set_password("bob", b"one").unwrap();
    let verifier = pool::Verifier::start(old.clone(), 1, 4).unwrap();
    let check = |user, password: &[u8]| {
        futures_lite::future::block_on(verifier.verify(user, password).unwrap())
    };
    let alice = check("alice", b"s3cret pass").unwrap();
    let bob = check("bob", b"one").unwrap();
    assert!(!verifier.revoked_after(alice, "alice"), "no reload yet");
    let mut new = old.clone();
    new.set_password("alice", b"new pass").unwrap();
    let changes = old.changes_to(&new);
    verifier.replace(new, changes.revoked);
    assert!(verifier.revoked_after(alice, "alice"));
    assert!(!verifier.revoked_after(bob, "bob"), "bob is unchanged");
    // The new password, checked against the new file: nothing after it.
    let again = check("alice", b"new pass").unwrap();
    assert!(!verifier.revoked_after(again, "alice"));
    assert!(check("alice", b"s3cret pass").is_none());
    // Past the reloads kept, nothing tells: revoked.
    for _ in 0..20 {
        verifier.replace(old.clone(), vec!["carol".to_owned()]);
    }
    assert!(verifier.revoked_after(bob, "bob"));
}

#[test]
fn checks_whose_connection_stopped_waiting_are_skipped() {
    let mut file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
    file.set_password("bob", b"slow").unwrap();
    let verifier = pool::Verifier::start(file, 1, 64).unwrap();
    // One thread: the first check (argon2id, tens of milliseconds) keeps it
    // busy while the next 20 queue; their connections give up (the
    // verdicts are dropped) before the thread takes them.
    let first = verifier.verify("bob", b"slow").unwrap();
    let gave_up: Vec<_> = (0..20).map(|_| verifier.verify("alice", b"x").unwrap()).collect();
    drop(gave_up);
    assert!(futures_lite::future::block_on(first).is_some());
    // A check queued behind them still gets its answer.
    let last = verifier.verify("alice", b"s3cret pass").unwrap();
    assert!(futures_lite::future::block_on(last).is_some());
    assert_eq!(verifier.abandoned(), 20);
}
