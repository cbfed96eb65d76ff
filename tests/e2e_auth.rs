//! End to end: authentication with a password file made by `ringmq passwd
//! --password-stdin` (argon2id) plus a line written by Debian's
//! `mosquitto_passwd` ($7$): right passwords accepted, wrong ones, unknown
//! users and anonymous clients refused with the right CONNACK codes, in
//! 3.1.1 and 5.0, through ringmq's codec and through mosquitto_pub.

mod common;

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    common::scratch_dir("e2e-auth", name)
}

use bytes::Bytes;
use common::{client_id_on_shard, Broker, RawClient};
use ringmq::protocol::{Connect, Packet, ProtocolVersion, ReasonCode};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `ringmq ARGS` with `stdin`.
fn ringmq(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit without reading it (e.g. on a bad file).
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// `ringmq passwd --password-stdin FILE USER`, which must succeed.
fn set_password(file: &Path, user: &str, password: &str) {
    let output = ringmq(
        &["passwd", "--password-stdin", file.to_str().unwrap(), user],
        &format!("{password}\n"),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Appends a `$7$` line for `user` made by mosquitto_passwd, if installed.
fn add_mosquitto_user(dir: &Path, file: &Path, user: &str, password: &str) -> bool {
    let theirs = dir.join("mosquitto_passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b", theirs.to_str().unwrap(), user, password])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !made {
        assert!(std::env::var_os("CI").is_none(), "mosquitto_passwd is required on CI");
        eprintln!("SKIPPED: mosquitto_passwd is not installed");
        return false;
    }
    let line = std::fs::read_to_string(&theirs).unwrap();
    assert!(line.starts_with(&format!("{user}:$7$")), "{line}");
    let mut text = std::fs::read_to_string(file).unwrap();
    text.push_str(&line);
    std::fs::write(file, text).unwrap();
    true
}

/// Connects with these credentials; the CONNACK's code, or `None` if
/// the connection closed without one.
fn connack(
    broker: &Broker,
    version: ProtocolVersion,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Option<ReasonCode> {
    let mut client = RawClient::connect(broker.addr);
    client.send(&Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: user.map(Into::into),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: Default::default(),
    })));
    let reason = match client.recv()? {
        Packet::ConnAck(ack) => ack.reason,
        other => panic!("expected a CONNACK, got {other:?}"),
    };
    if reason != ReasonCode::Success {
        assert!(client.closed_within(Duration::from_secs(5)), "a refused client is closed");
    }
    Some(reason)
}

#[test]
fn password_file_accepts_right_passwords_and_refuses_the_rest() {
    let dir = scratch("main");
    let file = dir.join("passwd");
    set_password(&file, "alice", "right horse");
    set_password(&file, "bob", "battery");
    // -D deletes, as mosquitto_passwd -D.
    let deleted = ringmq(&["passwd", "-D", file.to_str().unwrap(), "bob"], "");
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a new password file is private");
    let mosquitto = add_mosquitto_user(&dir, &file, "carol", "staple");

    let config = format!("password_file = {:?}\n", file.to_str().unwrap());
    let check = dir.join("ringmq.toml");
    std::fs::write(&check, &config).unwrap();
    let checked = ringmq(&["check-config", check.to_str().unwrap()], "");
    assert!(checked.status.success());
    let users = if mosquitto { "2 user(s)" } else { "1 user(s)" };
    assert!(String::from_utf8_lossy(&checked.stdout).contains(users));

    let broker = Broker::start_with_config(2, &config);
    for (n, version) in [ProtocolVersion::V3_1_1, ProtocolVersion::V5].into_iter().enumerate() {
        // Both shards: a client homed on the other shard is handed off
        // after its check.
        for shard in 0..2 {
            let id = client_id_on_shard(&format!("auth{n}"), shard, 2);
            let id = id.as_str();
            let ok = Some(ReasonCode::Success);
            assert_eq!(connack(&broker, version, id, Some("alice"), Some("right horse")), ok);
            let bad = Some(ReasonCode::BadUserNameOrPassword);
            assert_eq!(connack(&broker, version, id, Some("alice"), Some("wrong horse")), bad);
            assert_eq!(connack(&broker, version, id, Some("alice"), None), bad);
            assert_eq!(connack(&broker, version, id, Some("bob"), Some("battery")), bad);
            assert_eq!(connack(&broker, version, id, Some("mallory"), Some("x")), bad);
            let anonymous = Some(ReasonCode::NotAuthorized);
            assert_eq!(connack(&broker, version, id, None, None), anonymous);
            if mosquitto {
                assert_eq!(connack(&broker, version, id, Some("carol"), Some("staple")), ok);
                assert_eq!(connack(&broker, version, id, Some("carol"), Some("stapler")), bad);
            }
        }
    }
    if mosquitto {
        let port = broker.port().to_string();
        let publish = |user: &str, password: &str| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-t", "auth/t", "-m", "hi", "-q", "1"])
                .args(["-u", user, "-P", password])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        assert!(publish("alice", "right horse"));
        assert!(publish("carol", "staple"));
        assert!(!publish("alice", "wrong"));
        assert!(!publish("nobody", "x"));
    }
    assert!(broker.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn allow_anonymous_true_lets_clients_without_a_user_name_in() {
    let dir = scratch("anon");
    let file = dir.join("passwd");
    set_password(&file, "alice", "pw");
    let config = format!("password_file = {:?}\nallow_anonymous = true\n", file.to_str().unwrap());
    let broker = Broker::start_with_config(1, &config);
    let v5 = ProtocolVersion::V5;
    assert_eq!(connack(&broker, v5, "a1", None, None), Some(ReasonCode::Success));
    // A user name given is still checked.
    assert_eq!(
        connack(&broker, v5, "a2", Some("alice"), Some("no")),
        Some(ReasonCode::BadUserNameOrPassword)
    );
    assert!(broker.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_password_file_stops_the_start_with_one_line() {
    let dir = scratch("bad");
    let file = dir.join("passwd");
    std::fs::write(&file, "# users\nalice:$7$101$notbase64!$AAAA\n").unwrap();
    let config = dir.join("ringmq.toml");
    std::fs::write(&config, format!("password_file = {:?}\n", file.to_str().unwrap())).unwrap();
    for args in [
        vec!["check-config", config.to_str().unwrap()],
        vec!["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    ] {
        let output = ringmq(&args, "");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr,
            format!(
                "ringmq: password_file = {:?}: line 2: invalid `$7$` hash: bad base64 salt\n",
                file
            )
        );
    }
    // `ringmq passwd` refuses to rewrite a file it cannot read.
    let output = ringmq(&["passwd", "--password-stdin", file.to_str().unwrap(), "bob"], "pw\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 2"));
    std::fs::remove_dir_all(&dir).unwrap();
}
