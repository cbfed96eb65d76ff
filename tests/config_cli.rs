//! The `ringmq` binary's command line: `check-config` on good and bad
//! files, refusals of `serve` that happen before the runtime starts, usage
//! errors and `--help`. None of these tests starts a broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn ringmq(args: &[&str]) -> Output {
    ringmq_with_env(args, &[])
}

fn ringmq_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    command.args(args).env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the ringmq binary runs")
}

/// A configuration file with `text`, unique to this test process and call.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ringmq-config-cli-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("temp file is writable");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a refusal: exit status 2, nothing on stdout, exactly one line on
/// stderr starting with `ringmq: `, and no panic or backtrace. Returns the
/// line without its prefix.
fn refused(output: &Output) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {err}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.ends_with('\n'));
    assert!(!err.contains("panicked"), "{err}");
    err.trim_end().strip_prefix("ringmq: ").unwrap_or_else(|| panic!("no prefix: {err}")).to_owned()
}

// ---- check-config ----------------------------------------------------------

#[test]
fn example_file_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("ringmq.toml");
    let output = ringmq(&["check-config", example.to_str().expect("UTF-8 path")]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "ok: 1 listener(s), shards=auto\n");
    assert!(output.stderr.is_empty(), "{}", stderr(&output));
}

#[test]
fn check_config_summarises_a_good_file() {
    let file = TempConfig::new(
        "shards = 4\nallow_anonymous = true\n\
         [[listener]]\nbind = \"0.0.0.0:1883\"\n[[listener]]\nbind = \"[::1]:1884\"\n",
    );
    let output = ringmq(&["check-config", file.path()]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stdout(&output), "ok: 2 listener(s), shards=4\n");
}

#[test]
fn check_config_refuses_an_out_of_range_value_by_key() {
    let file = TempConfig::new("[limits]\nmax_inflight = 0\n");
    assert_eq!(
        refused(&ringmq(&["check-config", file.path()])),
        format!(
            "config error: {}:2:16: limits.max_inflight = 0: must be between 1 and 65535",
            file.path()
        )
    );
}

#[test]
fn check_config_refuses_an_unknown_key_naming_key_and_file() {
    let file = TempConfig::new("[limits]\nmax_inflite = 3\n");
    let line = refused(&ringmq(&["check-config", file.path()]));
    let expected = format!("config error: {}:2:1: unknown key `limits.max_inflite`", file.path());
    assert!(line.starts_with(&expected), "{line}");
}

#[test]
fn check_config_refuses_a_syntax_error_on_one_line() {
    let file = TempConfig::new("[limits\nmax_inflight = 1\n");
    let line = refused(&ringmq(&["check-config", file.path()]));
    assert!(line.starts_with(&format!("config error: {}:1:", file.path())), "{line}");
}

#[test]
fn check_config_names_the_key_of_a_line_without_a_value() {
    let file = TempConfig::new("[limits]\nmax_inflight = \n");
    let line = refused(&ringmq(&["check-config", file.path()]));
    let expected = format!(
        "config error: {}:2:16: limits.max_inflight: the value is missing or not valid TOML",
        file.path()
    );
    assert!(line.starts_with(&expected), "{line}");
    assert!(line.contains("write one after `=`"), "{line}");
}

#[test]
fn check_config_refuses_features_not_in_this_release() {
    let file = TempConfig::new("[[listener]]\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n");
    assert!(refused(&ringmq(&["check-config", file.path()])).contains("listener[0].tls"));
}

#[test]
fn check_config_refuses_durability_without_a_data_dir() {
    let file = TempConfig::new("durability = \"always\"\n");
    let line = refused(&ringmq(&["check-config", file.path()]));
    assert!(line.starts_with(&format!("config error: {}:1:", file.path())), "{line}");
    assert!(line.contains("durability = \"always\": needs data_dir"), "{line}");
}

#[test]
fn check_config_refuses_an_anonymous_public_listener() {
    let file = TempConfig::new("[[listener]]\nbind = \"0.0.0.0:1883\"\n");
    assert_eq!(
        refused(&ringmq(&["check-config", file.path()])),
        format!(
            "config error: {}:2:8: listener[0].bind = \"0.0.0.0:1883\" is not loopback and no \
             authentication is configured; set allow_anonymous = true (globally, or \
             listener[0].allow_anonymous) to accept anonymous clients on it",
            file.path()
        )
    );
}

#[test]
fn check_config_refuses_a_missing_file() {
    let line = refused(&ringmq(&["check-config", "/nonexistent/ringmq.toml"]));
    assert!(line.starts_with("config error: cannot read /nonexistent/ringmq.toml: "), "{line}");
}

// ---- serve: refusals before the runtime starts -----------------------------

#[test]
fn serve_refuses_a_bad_listen_address_without_a_command() {
    assert_eq!(
        refused(&ringmq(&["--listen", "0.0.0.0:x"])),
        "config error: --listen \"0.0.0.0:x\": not a socket address (e.g. \"0.0.0.0:1883\")"
    );
}

#[test]
fn serve_checks_the_listen_flag_against_the_anonymous_rule() {
    let line = refused(&ringmq(&["serve", "--listen", "0.0.0.0:1883"]));
    assert!(line.starts_with("config error: --listen \"0.0.0.0:1883\" is not loopback"), "{line}");
}

#[test]
fn serve_refuses_bad_shards_and_log_flags() {
    assert!(refused(&ringmq(&["serve", "--shards", "5000"])).contains("--shards 5000"));
    assert!(refused(&ringmq(&["--log", "loud"])).contains("--log \"loud\""));
}

#[test]
fn serve_refuses_a_bad_file() {
    let line = refused(&ringmq(&["serve", "--config", "/nonexistent/ringmq.toml"]));
    assert!(line.contains("cannot read /nonexistent/ringmq.toml"), "{line}");
    let file = TempConfig::new("[log]\nformat = \"xml\"\n");
    assert!(refused(&ringmq(&["-c", file.path()])).contains("log.format = \"xml\""));
}

#[test]
fn serve_refuses_a_bad_rust_log() {
    let file = TempConfig::new("");
    let output = ringmq_with_env(&["--config", file.path()], &[("RUST_LOG", "ringmq=loud")]);
    let line = refused(&output);
    assert!(line.starts_with("config error: RUST_LOG = \"ringmq=loud\": "), "{line}");
}

// ---- usage -----------------------------------------------------------------

#[test]
fn unknown_flag_is_a_usage_error() {
    let output = ringmq(&["--bogus"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(stderr(&output).contains("--bogus"), "{}", stderr(&output));
}

#[test]
fn non_numeric_shards_is_a_usage_error() {
    let output = ringmq(&["serve", "--shards", "many"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--shards"), "{}", stderr(&output));
}

#[test]
fn passwd_without_a_user_is_a_usage_error() {
    let output = ringmq(&["passwd", "/tmp/x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("<USER>"), "{}", stderr(&output));
}

#[test]
fn help_lists_the_commands_and_flags() {
    let output = ringmq(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    let words = [
        "serve",
        "check-config",
        "passwd",
        "--config",
        "--listen",
        "--shards",
        "--log",
        "--version",
    ];
    for word in words {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }

    let output = ringmq(&["passwd", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    for word in ["<FILE>", "<USER>", "--delete", "-D", "--password-stdin"] {
        assert!(stdout(&output).contains(word), "{word}: {}", stdout(&output));
    }

    let output = ringmq(&["serve", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("--listen <ADDR>"), "{}", stdout(&output));

    let output = ringmq(&["check-config", "--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("<FILE>"), "{}", stdout(&output));
}

#[test]
fn version_is_printed() {
    let output = ringmq(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stdout(&output), format!("ringmq {}\n", env!("CARGO_PKG_VERSION")));
}
