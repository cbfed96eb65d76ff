//! The `ringmq` command: reads the command line and the configuration,
//! sets up logging and runs the broker.
//!
//! * `ringmq serve [--config FILE] [--listen ADDR]... [--shards N] [--log LEVEL]`
//!   runs the broker; `serve` is the default command, so `ringmq --listen
//!   0.0.0.0:1883` works too.
//! * `ringmq check-config FILE` validates a file (and the password and ACL
//!   files it names) and says so.
//! * `ringmq passwd FILE USER [--password-stdin]` sets USER's password in
//!   a password file (argon2id); `ringmq passwd -D FILE USER` deletes USER;
//!   with `--scram` FILE is a SCRAM-SHA-256 credentials file (`scram_file`).
//! * `ringmq check-config FILE` also reads the `scram_file`.
//!
//! On SIGHUP `serve` re-reads its `--config` file with the same flags and
//! applies what can change without a restart (see `ringmq::runtime::Reload`).
//!
//! Every failure is one line on stderr, `ringmq: <error>`, never a panic or
//! a backtrace. Exit status: 0 on success, 1 when the runtime fails to start
//! or stops with an error, 2 when the configuration (file, flags or
//! `RUST_LOG`) is refused; clap's own usage errors also exit with 2.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ringmq::auth::acl::AclFile;
use ringmq::auth::scram::{self, ScramFile};
use ringmq::auth::PasswordFile;
use ringmq::config::{Config, LogFormat, LogLevel, Overrides};
use ringmq::runtime::{AuthFiles, Reload};
use std::error::Error;
use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// A thread-per-core MQTT 3.1/3.1.1/5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "ringmq", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The options of `serve`, which runs when no command is given.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default command).
    Serve(ServeArgs),
    /// Check a configuration file: print a summary and exit 0 if it is
    /// valid, print the problem and exit 2 if not.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Set a user's password in a password file (argon2id), or with --scram
    /// in a SCRAM-SHA-256 credentials file, creating the file if needed;
    /// with -D, delete the user. The password is asked twice on the
    /// terminal, without echo.
    Passwd(PasswdArgs),
}

#[derive(Debug, Args)]
struct PasswdArgs {
    /// The password file (the configuration's password_file; with
    /// --scram, its scram_file).
    file: PathBuf,
    /// The user name.
    user: String,
    /// Delete USER instead of setting a password (as mosquitto_passwd -D).
    #[arg(short = 'D', long)]
    delete: bool,
    /// Read the password from the first line of standard input instead of
    /// prompting (for scripts).
    #[arg(long, conflicts_with = "delete")]
    password_stdin: bool,
    /// FILE is a SCRAM-SHA-256 credentials file (RFC 5803 lines, for MQTT
    /// 5.0 enhanced authentication): store the salted keys, not the
    /// password (PBKDF2-HMAC-SHA-256, 600,000 iterations).
    #[arg(long)]
    scram: bool,
    /// With --scram: PBKDF2 iterations (at least 4096, RFC 7677). Every
    /// client pays them once per connection; the broker never does.
    #[arg(long, requires = "scram", conflicts_with = "delete", value_name = "N")]
    iterations: Option<u32>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML); without it, the built-in defaults (one
    /// listener on 127.0.0.1:1883).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on ADDR (e.g. 0.0.0.0:1883) instead of the configured
    /// listeners; repeat for several.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Number of shards, one per core (0 = one per CPU the process may use).
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// Log level: error, warn, info, debug or trace. Takes precedence over
    /// RUST_LOG, which takes precedence over log.level in the file.
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
}

/// Why the command failed: the line printed after `ringmq: ` and the exit
/// status.
#[derive(Debug)]
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    /// The configuration was refused: exit status 2.
    fn config(error: &(dyn Error + 'static)) -> Self {
        Self { status: 2, message: one_line(error) }
    }

    /// The runtime failed: exit status 1.
    fn runtime(error: &(dyn Error + 'static)) -> Self {
        Self { status: 1, message: one_line(error) }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Passwd(args)) => passwd(&args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Nothing sensible is left to do if stderr itself is gone.
            let _ = writeln!(io::stderr(), "ringmq: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn check_config(file: PathBuf) -> Result<(), Failure> {
    let config =
        Config::from_file(&file, &Overrides::default()).map_err(|error| Failure::config(&error))?;
    let files = load_auth_files(&config)?;
    let mut users =
        files.passwords.map_or_else(String::new, |file| format!(", {} user(s)", file.len()));
    if let Some(scram) = &files.scram {
        users.push_str(&format!(", {} SCRAM user(s)", scram.len()));
    }
    let acl = files.acl.map_or_else(String::new, |file| {
        format!(", acl: {} user section(s), {} rule(s)", file.users(), file.rules())
    });
    let tls = ringmq::net::tls::load_listeners(&config).map_err(|e| Failure::config(&e))?;
    let tls = match tls.iter().flatten().count() {
        0 => String::new(),
        n => format!(", {n} TLS listener(s)"),
    };
    let proxied = match config.listeners().iter().filter(|l| l.proxy_protocol()).count() {
        0 => String::new(),
        n => format!(", {n} PROXY protocol listener(s)"),
    };
    // The exit status is the answer; a closed stdout (e.g. `| head -c0`)
    // must not turn it into a panic.
    let _ = writeln!(
        io::stdout(),
        "ok: {} listener(s), shards={}{users}{acl}{tls}{proxied}",
        config.listeners().len(),
        config.shards()
    );
    Ok(())
}

/// Reads the configured password, ACL and SCRAM files: a bad one is a
/// configuration error.
fn load_auth_files(config: &Config) -> Result<AuthFiles, Failure> {
    let passwords = config.password_file().map(PasswordFile::load).transpose();
    let passwords = passwords.map_err(|e| Failure::config(&e))?;
    let acl = config.acl_file().map(AclFile::load).transpose().map_err(|e| Failure::config(&e))?;
    let scram = config.scram_file().map(ScramFile::load).transpose();
    let scram = scram.map_err(|e| Failure::config(&e))?;
    Ok(AuthFiles { passwords, acl, scram })
}

/// `ringmq passwd --scram`: as [`passwd`], on a SCRAM credentials file.
fn passwd_scram(args: &PasswdArgs) -> Result<(), Failure> {
    let failure = |message: String| Failure { status: 1, message };
    let mut file = match std::fs::read_to_string(&args.file) {
        Ok(text) => ScramFile::parse(&text).map_err(|(line, reason)| {
            failure(format!("{}: line {line}: {reason}", args.file.display()))
        })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound && !args.delete => {
            ScramFile::default()
        }
        Err(error) => return Err(failure(format!("cannot read {}: {error}", args.file.display()))),
    };
    if args.delete {
        if !file.remove(&args.user) {
            return Err(failure(format!("user {:?} is not in {}", args.user, args.file.display())));
        }
    } else {
        let password = read_password(args.password_stdin).map_err(failure)?;
        let iterations = args.iterations.unwrap_or(scram::DEFAULT_ITERATIONS);
        file.set_password(&args.user, &password, iterations).map_err(failure)?;
    }
    write_replacing(&args.file, file.to_text().as_bytes())
        .map_err(|error| failure(format!("cannot write {}: {error}", args.file.display())))
}

/// `ringmq passwd`: sets or deletes one user, then replaces the file
/// atomically (a new file is readable by its owner only).
fn passwd(args: &PasswdArgs) -> Result<(), Failure> {
    if args.scram {
        return passwd_scram(args);
    }
    let failure = |message: String| Failure { status: 1, message };
    let mut file = match std::fs::read_to_string(&args.file) {
        Ok(text) => PasswordFile::parse(&text)
            .map_err(|error| failure(format!("{}: {error}", args.file.display())))?,
        Err(error) if error.kind() == io::ErrorKind::NotFound && !args.delete => {
            PasswordFile::default()
        }
        Err(error) => return Err(failure(format!("cannot read {}: {error}", args.file.display()))),
    };
    if args.delete {
        if !file.remove(&args.user) {
            return Err(failure(format!("user {:?} is not in {}", args.user, args.file.display())));
        }
    } else {
        let password = read_password(args.password_stdin).map_err(failure)?;
        file.set_password(&args.user, password.as_bytes()).map_err(failure)?;
    }
    write_replacing(&args.file, file.to_text().as_bytes())
        .map_err(|error| failure(format!("cannot write {}: {error}", args.file.display())))
}

/// The new password: the first line of stdin, or asked twice without echo.
fn read_password(from_stdin: bool) -> Result<String, String> {
    let password = if from_stdin {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let second = rpassword::prompt_password("Reenter password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != second {
            return Err("the passwords do not match".to_owned());
        }
        first
    };
    if password.is_empty() {
        return Err("the password is empty".to_owned());
    }
    Ok(password)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, keeping the permissions of the file replaced (0600 for a new one).
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    out.write_all(bytes)?;
    if let Ok(metadata) = std::fs::metadata(path) {
        out.set_permissions(metadata.permissions())?;
    }
    out.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let overrides = Overrides { listen: args.listen, shards: args.shards, log: args.log };
    let config = match &args.config {
        Some(file) => Config::from_file(file, &overrides),
        None => Config::from_overrides(&overrides),
    }
    .map_err(|error| Failure::config(&error))?;
    let files = load_auth_files(&config)?;
    let tls = ringmq::net::tls::load_listeners(&config).map_err(|e| Failure::config(&e))?;
    let set_log_level = init_tracing(&config, overrides.log.is_some())
        .map_err(|error| Failure::config(error.as_ref()))?;
    let listeners: Vec<String> =
        config.listeners().iter().map(|listener| listener.bind().to_string()).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = %config.shards(),
        listeners = ?listeners,
        "starting ringmq"
    );
    let reload = args.config.map(|file| Reload {
        read: Box::new(move || Config::from_file(&file, &overrides)),
        set_log_level,
    });
    ringmq::runtime::run(config, files, tls, reload).map_err(|error| Failure::runtime(&error))
}

/// Sets the level of the installed subscriber (a reload's `log.level`), or
/// says which setting takes precedence over the file's.
type SetLogLevel = Box<dyn FnMut(LogLevel) -> Result<(), String> + Send>;

/// Installs the global tracing subscriber, writing to stderr in the
/// configured format, in colour only on a terminal (not in a journal or a
/// file). The filter is `--log` when given, else `RUST_LOG` when
/// set (it may hold per-module directives), else `log.level`. Returns what
/// a reload calls to change `log.level`: it applies only when neither
/// `--log` nor `RUST_LOG` set the filter.
fn init_tracing(config: &Config, level_flag: bool) -> anyhow::Result<SetLogLevel> {
    let level = config.log().level().as_str();
    let (filter, precedence) = match std::env::var("RUST_LOG") {
        _ if level_flag => (EnvFilter::new(level), Some("--log takes precedence")),
        Ok(directives) if !directives.trim().is_empty() => (
            EnvFilter::try_new(&directives)
                .with_context(|| format!("config error: RUST_LOG = {directives:?}"))?,
            Some("RUST_LOG takes precedence"),
        ),
        _ => (EnvFilter::new(level), None),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal());
    let set_level = |reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send>| -> SetLogLevel {
        Box::new(move |level: LogLevel| match precedence {
            Some(why) => Err(why.to_string()),
            None => reload(EnvFilter::new(level.as_str())),
        })
    };
    let setter = match config.log().format() {
        LogFormat::Text => {
            let subscriber = subscriber.with_filter_reloading();
            let handle = subscriber.reload_handle();
            subscriber.try_init().map(|()| {
                set_level(Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())))
            })
        }
        LogFormat::Json => {
            let subscriber = subscriber.json().with_filter_reloading();
            let handle = subscriber.reload_handle();
            subscriber.try_init().map(|()| {
                set_level(Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())))
            })
        }
    };
    setter.map_err(|error| anyhow::anyhow!("cannot set up logging: {error}"))
}

/// `error` and its sources as one line: `error: cause: cause`, without
/// repeating a cause its parent's message already includes, line breaks
/// folded into `; `.
fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    let parts: Vec<&str> = line.lines().map(str::trim).filter(|part| !part.is_empty()).collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\nsecond line")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] Inner);

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_command() {
        let cli = Cli::try_parse_from(["ringmq", "--listen", "127.0.0.1:1", "--shards", "2"])
            .expect("flags without a command are serve's");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, ["127.0.0.1:1"]);
        assert_eq!(cli.serve.shards, Some(2));
    }

    #[test]
    fn serve_flags_are_repeatable_and_optional() {
        let cli = Cli::try_parse_from([
            "ringmq", "serve", "-c", "x.toml", "--listen", "a", "--listen", "b", "--log", "debug",
        ])
        .expect("valid serve command line");
        let Some(Command::Serve(args)) = cli.command else { panic!("not serve: {cli:?}") };
        assert_eq!(args.config, Some(PathBuf::from("x.toml")));
        assert_eq!(args.listen, ["a", "b"]);
        assert_eq!(args.log.as_deref(), Some("debug"));
        assert_eq!(args.shards, None);
    }

    #[test]
    fn flags_before_a_command_are_refused() {
        assert!(Cli::try_parse_from(["ringmq", "--shards", "2", "serve"]).is_err());
        assert!(Cli::try_parse_from(["ringmq", "--shards", "2", "check-config", "f"]).is_err());
    }

    #[test]
    fn passwd_takes_a_file_and_a_user() {
        assert!(Cli::try_parse_from(["ringmq", "passwd", "file"]).is_err());
        let cli = Cli::try_parse_from(["ringmq", "passwd", "f", "u", "--password-stdin"]).unwrap();
        let Some(Command::Passwd(args)) = cli.command else { panic!("not passwd") };
        assert_eq!((args.file.as_path(), args.user.as_str()), (Path::new("f"), "u"));
        assert!(args.password_stdin && !args.delete);
        // As mosquitto_passwd: -D FILE USER; also FILE -D USER.
        for line in [["ringmq", "passwd", "-D", "f", "u"], ["ringmq", "passwd", "f", "-D", "u"]] {
            let cli = Cli::try_parse_from(line).unwrap();
            let Some(Command::Passwd(args)) = cli.command else { panic!("not passwd") };
            assert!(args.delete && args.user == "u");
        }
        assert!(
            Cli::try_parse_from(["ringmq", "passwd", "-D", "f", "u", "--password-stdin"]).is_err()
        );
    }

    #[test]
    fn check_config_needs_a_file() {
        assert!(Cli::try_parse_from(["ringmq", "check-config"]).is_err());
        let cli = Cli::try_parse_from(["ringmq", "check-config", "f.toml"]).expect("valid");
        let Some(Command::CheckConfig { file }) = cli.command else { panic!("not check-config") };
        assert_eq!(file, Path::new("f.toml"));
    }

    #[test]
    fn errors_are_rendered_on_one_line_with_their_causes() {
        assert_eq!(one_line(&Outer(Inner)), "outer: inner; second line");
        assert_eq!(one_line(&Repeats(Inner)), "wrapped: inner; second line");
    }

    #[test]
    fn failures_have_the_documented_exit_status() {
        assert_eq!(Failure::config(&Inner).status, 2);
        assert_eq!(Failure::runtime(&Inner).status, 1);
    }
}
