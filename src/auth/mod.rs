//! Authentication: the password file and the verification of a CONNECT's
//! credentials against it; and, in [`acl`], the ACL file that says which
//! topics each client may use.
//!
//! This module owns the password file's format (one `user:hash` per line,
//! `#` comments and blank lines ignored) and the hashes it accepts:
//! argon2id PHC strings, which `ringmq passwd` writes, and Mosquitto's
//! `$7$` (PBKDF2-HMAC-SHA512, as `mosquitto_passwd` writes it) and `$6$`
//! (salted SHA-512, as Mosquitto 1.x wrote it), so a Mosquitto user's file
//! works unchanged. Parsing and verifying are pure
//! (no IO besides [`PasswordFile::load`], used at start); verifying costs
//! milliseconds by design, so the broker runs it on the small thread pool
//! of [`pool`], never on a shard.
//!
//! MQTT 5.0 enhanced authentication is [`enhanced`] (the interface of a
//! method) and [`scram`] (SCRAM-SHA-256 and its credentials file,
//! `scram_file`); its server side costs microseconds and runs on the
//! shards.
//!
//! Credentials are never logged: [`PasswordFile`]'s `Debug` shows the user
//! names only.

pub mod acl;
pub mod enhanced;
pub mod pool;
pub mod scram;
#[cfg(test)]
mod tests;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use std::fmt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq as _;

/// The hash of a password that nobody has: verified against when the user
/// is unknown, so that an unknown user costs as long as a wrong password
/// and the timing does not tell which user names exist.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$cmluZ21xLXVua25vd24$4N6oUE8pwVIzLSQfYN1N9Y/bo3qKbNMr1YW3mlmEcwQ";

/// The most PBKDF2 iterations accepted in a `$7$` hash: a file with more
/// would let one CONNECT occupy a verification thread for seconds.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// A parsed password file: user names and their hashes, in file order.
#[derive(Clone, Default)]
pub struct PasswordFile {
    entries: Vec<Entry>,
    /// User name -> index into `entries`.
    index: hashbrown::HashMap<String, usize>,
}

/// What a reloaded password file changed, in users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// Users new in the file.
    pub added: usize,
    /// Users no longer in it.
    pub removed: usize,
    /// Users whose hash changed.
    pub changed: usize,
    /// The users removed or whose hash changed: their connected clients
    /// proved a password the new file no longer accepts.
    pub revoked: Vec<String>,
}

impl UserChanges {
    /// Whether no user changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One `user:hash` line.
#[derive(Clone)]
struct Entry {
    user: String,
    /// The hash as written, for writing the file back unchanged.
    text: String,
    hash: Hash,
}

/// A password hash, parsed once at load.
#[derive(Clone)]
enum Hash {
    /// An argon2 PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`);
    /// kept as text because `PasswordHash` borrows it.
    Argon2,
    /// Mosquitto's `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
    /// Mosquitto's `$6$salt$hash` (what `mosquitto_passwd` wrote before
    /// 2.0, and writes with `-H sha512`): one SHA-512 of the password
    /// followed by the salt. Weak (one hash, no work factor): accepted so
    /// that old files keep working; `ringmq passwd` rewrites a user's
    /// entry as argon2id.
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

/// A line of a password file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, without the hash itself.
    pub reason: String,
}

/// The password file could not be loaded: one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("password_file = {path:?}: cannot read it: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("password_file = {path:?}: {source}")]
    Parse {
        /// The configured path.
        path: PathBuf,
        /// The line and what is wrong with it.
        source: ParseError,
    },
}

impl PasswordFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|source| LoadError::Parse { path: path.to_owned(), source })
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut file = Self::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: &str| ParseError { line: number + 1, reason: reason.to_owned() };
            let (user, hash) =
                line.split_once(':').ok_or_else(|| error("expected `user:hash`, found no `:`"))?;
            if user.is_empty() {
                return Err(error("the user name is empty"));
            }
            if file.index.contains_key(user) {
                return Err(error(&format!("user {user:?} appears twice")));
            }
            let parsed = parse_hash(hash).map_err(|reason| error(&reason))?;
            file.insert(user.to_owned(), hash.to_owned(), parsed);
        }
        Ok(file)
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no user.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `password` is `user`'s. Takes milliseconds (that is the
    /// point of the hashes): call it off the shards.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.index.get(user).map(|&at| &self.entries[at]) {
            Some(entry) => entry.hash.verify(&entry.text, password),
            None => {
                // Same cost as a wrong password; the result is ignored.
                Hash::Argon2.verify(UNKNOWN_USER_HASH, password);
                false
            }
        }
    }

    /// How `new` differs from this file: users added, removed, and whose
    /// hash changed (for the reload's log line; no hash is shown).
    pub fn changes_to(&self, new: &Self) -> UserChanges {
        let mut changes = UserChanges::default();
        for entry in &new.entries {
            match self.index.get(&entry.user).map(|&at| &self.entries[at]) {
                None => changes.added += 1,
                Some(old) if old.text != entry.text => {
                    changes.changed += 1;
                    changes.revoked.push(entry.user.clone());
                }
                Some(_) => {}
            }
        }
        for removed in self.entries.iter().filter(|e| !new.index.contains_key(&e.user)) {
            changes.removed += 1;
            changes.revoked.push(removed.user.clone());
        }
        changes
    }

    /// Sets `user`'s password to the argon2id hash of `password` (adding
    /// the user at the end if new).
    pub fn set_password(&mut self, user: &str, password: &[u8]) -> Result<(), String> {
        if user.is_empty() || user.contains(':') || user.contains(['\n', '\r']) {
            return Err(format!("invalid user name {user:?}: empty, or contains `:` or a newline"));
        }
        let text = hash_argon2id(password)?;
        match self.index.get(user) {
            Some(&at) => {
                self.entries[at].text = text;
                self.entries[at].hash = Hash::Argon2;
            }
            None => self.insert(user.to_owned(), text, Hash::Argon2),
        }
        Ok(())
    }

    /// Removes `user`; false if there was no such user.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(at) = self.index.remove(user) else { return false };
        self.entries.remove(at);
        for index in self.index.values_mut() {
            if *index > at {
                *index -= 1;
            }
        }
        true
    }

    /// The file's text: one `user:hash` line per user, in order (comments
    /// of the file read are not kept).
    pub fn to_text(&self) -> String {
        self.entries.iter().map(|entry| format!("{}:{}\n", entry.user, entry.text)).collect()
    }

    fn insert(&mut self, user: String, text: String, hash: Hash) {
        self.index.insert(user.clone(), self.entries.len());
        self.entries.push(Entry { user, text, hash });
    }
}

impl fmt::Debug for PasswordFile {
    /// The user names only, never a hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.entries.iter().map(|e| &e.user).collect::<Vec<_>>())
            .finish()
    }
}

impl Hash {
    /// Whether `password` matches; `text` is the hash as written.
    fn verify(&self, text: &str, password: &[u8]) -> bool {
        match self {
            Self::Argon2 => PasswordHash::new(text)
                .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok()),
            Self::Pbkdf2Sha512 { iterations, salt, hash } => {
                let mut computed = vec![0; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut computed);
                bool::from(computed.ct_eq(hash))
            }
            Self::Sha512 { salt, hash } => {
                use sha2::Digest as _;
                let computed =
                    sha2::Sha512::new().chain_update(password).chain_update(salt).finalize();
                bool::from(computed.as_slice().ct_eq(hash))
            }
        }
    }
}

/// Parses the hash part of a line; the error says why, without the hash.
fn parse_hash(text: &str) -> Result<Hash, String> {
    if text.starts_with("$argon2") {
        let hash = PasswordHash::new(text).map_err(|e| format!("invalid argon2 hash: {e}"))?;
        if hash.algorithm.as_str() != "argon2id" {
            return Err(format!("{} hashes are not accepted; use argon2id", hash.algorithm));
        }
        if hash.salt.is_none() || hash.hash.is_none() {
            return Err("invalid argon2 hash: no salt or no hash".to_owned());
        }
        // Checks the parameters (memory, iterations) once, not per CONNECT.
        argon2::Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        return Ok(Hash::Argon2);
    }
    if let Some(rest) = text.strip_prefix("$7$") {
        return parse_pbkdf2(rest);
    }
    if let Some(rest) = text.strip_prefix("$6$") {
        return parse_sha512(rest);
    }
    Err("unknown hash format (expected argon2id `$argon2id$...`, or Mosquitto's `$7$...` or \
         `$6$...`)"
        .to_owned())
}

/// Mosquitto's `$7$`: `iterations$salt$hash`, salt and hash in standard
/// base64 (mosquitto `src/password_mosq.c`).
fn parse_pbkdf2(rest: &str) -> Result<Hash, String> {
    let mut parts = rest.split('$');
    let (Some(iterations), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("invalid `$7$` hash: expected `$7$iterations$salt$hash`".to_owned());
    };
    let iterations = iterations
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n))
        .ok_or_else(|| {
            format!("invalid `$7$` hash: iterations must be 1 to {MAX_PBKDF2_ITERATIONS}")
        })?;
    let base64 = base64::engine::general_purpose::STANDARD;
    let salt = base64.decode(salt).map_err(|_| "invalid `$7$` hash: bad base64 salt")?;
    let hash = base64.decode(hash).map_err(|_| "invalid `$7$` hash: bad base64 hash")?;
    if salt.is_empty() || hash.is_empty() {
        return Err("invalid `$7$` hash: empty salt or hash".to_owned());
    }
    Ok(Hash::Pbkdf2Sha512 { iterations, salt, hash })
}

/// Mosquitto's `$6$`: `salt$hash`, both standard base64; the hash is the
/// SHA-512 of the password then the salt (mosquitto 1.x
/// `src/security_default.c`, `pw__digest`), so it is 64 bytes.
fn parse_sha512(rest: &str) -> Result<Hash, String> {
    let (Some((salt, hash)), false) = (rest.split_once('$'), rest.matches('$').count() > 1) else {
        return Err("invalid `$6$` hash: expected `$6$salt$hash`".to_owned());
    };
    let base64 = base64::engine::general_purpose::STANDARD;
    let salt = base64.decode(salt).map_err(|_| "invalid `$6$` hash: bad base64 salt")?;
    let hash = base64.decode(hash).map_err(|_| "invalid `$6$` hash: bad base64 hash")?;
    if salt.is_empty() || hash.len() != 64 {
        return Err("invalid `$6$` hash: empty salt, or a hash that is not 64 bytes".to_owned());
    }
    Ok(Hash::Sha512 { salt, hash })
}

/// The argon2id PHC string of `password` with a random salt and the
/// argon2 crate's default parameters (m=19456 KiB, t=2, p=1: OWASP's
/// recommendation).
pub fn hash_argon2id(password: &[u8]) -> Result<String, String> {
    let mut salt = [0; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("cannot get random bytes: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}
