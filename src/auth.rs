//! Who may read and write: bearer tokens, htpasswd users, and the checks both front ends share.
//!
//! The cache is open unless a token (`--auth-token`) or an htpasswd file (`--htpasswd`) is
//! configured. Then every request must carry an `Authorization` header (HTTP) or metadata
//! entry (gRPC) that one of them accepts:
//!
//! - `Bearer TOKEN`, where `TOKEN` is the configured token (Bazel:
//!   `--remote_header=Authorization=Bearer TOKEN`);
//! - `Basic base64(USER:PASSWORD)`, where `USER:PASSWORD` is an htpasswd entry, or, with a token
//!   configured, any user name with the token as the password (for clients that only speak basic
//!   auth, from a URL: Bazel's and ccache's `http://user:TOKEN@host`). Over gRPC, Bazel 4.2 sends
//!   no credentials for `grpc://user:pass@host`; `--remote_header=Authorization=...` works.
//!
//! With `--allow-unauthenticated-reads`, requests that only read ([`Access::Read`]) may come
//! without credentials. Credentials that are present are always checked, reads included, so a
//! misconfigured client fails at its first request rather than at its first upload.
//!
//! Secrets are compared in constant time: the token through SHA-256 digests (so not even its
//! length leaks), htpasswd hashes byte by byte with [`subtle`]. bcrypt is slow on purpose, so:
//!
//! - it runs on the blocking pool (at most one per core at a time), never on the async workers
//!   that serve every other request;
//! - its verdicts, good and bad, are remembered under a keyed SHA-256 of user and password (at
//!   most [`VERDICTS_KEPT`] of them), so a client repeating a password, right or wrong, costs one
//!   bcrypt, not one per request;
//! - a user the file does not name is checked against the slowest hash in the file (and always
//!   refused), so an unknown user costs as much as a known one and response times do not tell
//!   which user names exist.
//!
//! The checks are plain functions over the header value: the gRPC services and the HTTP handler
//! call them directly, so they run the same in the simulator as in production (where the
//! blocking pool is replaced by running the hash in place: simulated time does not pass during
//! it anyway).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// What a request does, for `--allow-unauthenticated-reads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only reads: GET/HEAD, FindMissingBlobs, BatchReadBlobs, GetActionResult, GetTree,
    /// SplitBlob (the chunks it stores come from a stored blob), ByteStream Read,
    /// GetCapabilities, health checks.
    Read,
    /// Writes (or reveals upload state): PUT, BatchUpdateBlobs, UpdateActionResult,
    /// SpliceBlob, ByteStream Write and QueryWriteStatus.
    Write,
}

/// Why a request was refused (the message is safe to show the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header / metadata.
    Missing,
    /// An `Authorization` value that is not `Bearer ...` or well-formed `Basic ...`.
    Malformed,
    /// Credentials that no configured secret accepts.
    Invalid,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Denied::Missing => "authentication required: send an Authorization header (Basic or Bearer)",
            Denied::Malformed => "malformed Authorization header: expected \"Basic base64(user:password)\" or \"Bearer token\"",
            Denied::Invalid => "invalid credentials",
        })
    }
}

impl std::error::Error for Denied {}

/// The access policy of a server: open (the default) or requiring credentials.
///
/// Cheap to clone (shared); `Debug` shows no secrets.
#[derive(Clone, Default)]
pub struct Auth {
    inner: Option<Arc<Policy>>,
}

struct Policy {
    /// SHA-256 of the bearer token.
    token: Option<[u8; 32]>,
    users: Htpasswd,
    /// The slowest hash in `users`: what a user the file does not name is checked against.
    decoy: Option<PasswordHash>,
    allow_unauthenticated_reads: bool,
    /// Verdicts of slow hashes, by [`Policy::verdict_key`].
    verdicts: Mutex<Verdicts>,
    /// Per-process key for `verdicts`, so the remembered digests are useless elsewhere.
    key: [u8; 32],
    /// Slow verifications allowed at once: a flood of new passwords queues here instead of
    /// taking every thread of the blocking pool.
    slow_permits: tokio::sync::Semaphore,
    /// Slow verifications run so far.
    slow_runs: AtomicU64,
}

/// A fresh key for this process's verdicts. Under madsim it comes from the seeded RNG: rand's
/// thread RNG is seeded once per OS thread there, from the simulation's RNG, so its first use
/// would make a seed's draws depend on which seeds ran before it in the same thread.
fn process_key() -> [u8; 32] {
    #[cfg(madsim)]
    {
        madsim::rand::random()
    }
    #[cfg(not(madsim))]
    {
        rand::random()
    }
}

/// How many verdicts of slow hashes are remembered (about 50 bytes each).
pub const VERDICTS_KEPT: usize = 4096;

/// Remembered verdicts in two generations of at most half the bound each: when the current
/// one fills up it replaces the previous one, so the verdicts used recently survive a flood of
/// one-off passwords for a while and memory stays bounded.
struct Verdicts {
    capacity: usize,
    current: HashMap<[u8; 32], bool>,
    previous: HashMap<[u8; 32], bool>,
}

impl Verdicts {
    fn new(capacity: usize) -> Verdicts {
        Verdicts {
            capacity,
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// The verdict remembered under `key` (kept in the current generation if it was found in
    /// the previous one).
    fn get(&mut self, key: &[u8; 32]) -> Option<bool> {
        if let Some(&verdict) = self.current.get(key) {
            return Some(verdict);
        }
        let verdict = *self.previous.get(key)?;
        self.insert(*key, verdict);
        Some(verdict)
    }

    fn insert(&mut self, key: [u8; 32], verdict: bool) {
        if self.current.len() >= self.capacity.div_ceil(2) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, verdict);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Auth(open)"),
            Some(policy) => f
                .debug_struct("Auth")
                .field("token", &policy.token.is_some())
                .field("htpasswd_users", &policy.users.len())
                .field(
                    "allow_unauthenticated_reads",
                    &policy.allow_unauthenticated_reads,
                )
                .finish(),
        }
    }
}

impl Auth {
    /// No authentication: every request passes.
    pub fn open() -> Auth {
        Auth::default()
    }

    /// A policy accepting `token` (bearer, or as a basic-auth password) and the users of
    /// `htpasswd`. With neither, the cache stays open (`allow_unauthenticated_reads` is moot).
    pub fn new(
        token: Option<&str>,
        htpasswd: Option<Htpasswd>,
        allow_unauthenticated_reads: bool,
    ) -> Auth {
        let users = htpasswd.unwrap_or_default();
        if token.is_none() && users.is_empty() {
            return Auth::open();
        }
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        Auth {
            inner: Some(Arc::new(Policy {
                token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
                decoy: users.slowest().cloned(),
                users,
                allow_unauthenticated_reads,
                verdicts: Mutex::new(Verdicts::new(VERDICTS_KEPT)),
                key: process_key(),
                slow_permits: tokio::sync::Semaphore::new(parallelism),
                slow_runs: AtomicU64::new(0),
            })),
        }
    }

    /// Whether any credentials are required at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Checks a request that does `access`, carrying the `Authorization` value `authorization`.
    /// A slow password hash is verified on the blocking pool, so this may wait.
    pub async fn check(&self, authorization: Option<&[u8]>, access: Access) -> Result<(), Denied> {
        let Some(policy) = &self.inner else {
            return Ok(());
        };
        let Some(value) = authorization else {
            return if policy.allow_unauthenticated_reads && access == Access::Read {
                Ok(())
            } else {
                Err(Denied::Missing)
            };
        };
        match Credentials::parse(value)? {
            Credentials::Bearer(token) => policy.token_matches(token),
            Credentials::Basic { decoded, colon } => {
                let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
                // With a token configured, it is accepted as the password of any user name.
                if policy.token_matches(password).is_ok() {
                    return Ok(());
                }
                policy.user_matches(user, password).await
            }
        }
        .inspect_err(|denied| tracing::debug!(reason = %denied, "request refused"))
    }

    /// How many slow password hashes (bcrypt) have been verified: requests whose verdict was
    /// remembered do not count.
    pub fn slow_verifications(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |policy| policy.slow_runs.load(Ordering::Relaxed))
    }
}

impl Policy {
    fn token_matches(&self, candidate: &[u8]) -> Result<(), Denied> {
        let Some(token) = &self.token else {
            return Err(Denied::Invalid);
        };
        let candidate: [u8; 32] = Sha256::digest(candidate).into();
        if bool::from(candidate.ct_eq(token)) {
            Ok(())
        } else {
            Err(Denied::Invalid)
        }
    }

    async fn user_matches(&self, user: &[u8], password: &[u8]) -> Result<(), Denied> {
        // A user the file does not name (or a name that is not UTF-8) is checked against the
        // decoy and refused whatever it says, at the cost of a real user's check.
        let known = std::str::from_utf8(user)
            .ok()
            .and_then(|name| self.users.get(name));
        let Some(hash) = known.or(self.decoy.as_ref()) else {
            return Err(Denied::Invalid);
        };
        let verified = if hash.is_slow() {
            self.verify_slow(hash, user, password).await
        } else {
            hash.verify(password)
        };
        if verified && known.is_some() {
            Ok(())
        } else {
            Err(Denied::Invalid)
        }
    }

    /// Verifies `password` against the slow `hash`, or answers from a remembered verdict.
    async fn verify_slow(&self, hash: &PasswordHash, user: &[u8], password: &[u8]) -> bool {
        let key = self.verdict_key(user, password);
        if let Some(verdict) = self.lock_verdicts().get(&key) {
            return verdict;
        }
        let verdict = {
            // The semaphore is never closed, so acquiring fails only in theory; verifying
            // without a permit is then still correct.
            let _permit = self.slow_permits.acquire().await;
            self.slow_runs.fetch_add(1, Ordering::Relaxed);
            let (hash, password) = (hash.clone(), password.to_vec());
            off_the_async_workers(move || hash.verify(&password)).await
        };
        self.lock_verdicts().insert(key, verdict);
        verdict
    }

    fn lock_verdicts(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verdict_key(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((user.len() as u64).to_le_bytes());
        hasher.update(user);
        hasher.update(password);
        hasher.finalize().into()
    }
}

/// Runs the CPU-heavy `work` on the blocking pool and waits for it. Under madsim it runs in
/// place: the simulator has no blocking pool, and simulated time stands still during it.
async fn off_the_async_workers(work: impl FnOnce() -> bool + Send + 'static) -> bool {
    #[cfg(not(madsim))]
    {
        // The closure cannot panic on any input (bcrypt reports errors as values); if it did,
        // refusing is the safe answer.
        tokio::task::spawn_blocking(work).await.unwrap_or(false)
    }
    #[cfg(madsim)]
    {
        work()
    }
}

/// The parsed value of an `Authorization` header (no `Debug`: it holds secrets).
enum Credentials<'a> {
    /// `Bearer TOKEN`.
    Bearer(&'a [u8]),
    /// `Basic base64(user:password)`: the decoded bytes and where the colon is.
    Basic { decoded: Vec<u8>, colon: usize },
}

impl<'a> Credentials<'a> {
    fn parse(value: &'a [u8]) -> Result<Credentials<'a>, Denied> {
        let value = value.trim_ascii();
        let split = value
            .iter()
            .position(|&b| b == b' ')
            .ok_or(Denied::Malformed)?;
        let (scheme, rest) = value.split_at(split);
        let rest = rest.trim_ascii();
        if scheme.eq_ignore_ascii_case(b"bearer") && !rest.is_empty() {
            Ok(Credentials::Bearer(rest))
        } else if scheme.eq_ignore_ascii_case(b"basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| Denied::Malformed)?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(Denied::Malformed)?;
            Ok(Credentials::Basic { decoded, colon })
        } else {
            Err(Denied::Malformed)
        }
    }
}

/// A password hash from an htpasswd file.
#[derive(Clone)]
enum PasswordHash {
    /// `$2y$`, `$2b$`, `$2a$` (`htpasswd -B`).
    Bcrypt(String),
    /// `{SHA}base64(sha1(password))` (`htpasswd -s`).
    Sha1([u8; 20]),
    /// `$apr1$salt$hash` (`htpasswd`'s default, `-m`).
    Apr1 { salt: String, hash: String },
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        if let Some(encoded) = text.strip_prefix("{SHA}") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| "the {SHA} hash is not valid base64".to_owned())?;
            let digest: [u8; 20] = bytes
                .try_into()
                .map_err(|_| "the {SHA} hash is not 20 bytes long".to_owned())?;
            Ok(PasswordHash::Sha1(digest))
        } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| text.starts_with(p)) {
            text.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("the bcrypt hash is malformed: {e}"))?;
            Ok(PasswordHash::Bcrypt(text.to_owned()))
        } else if let Some(rest) = text.strip_prefix("$apr1$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or_else(|| "the $apr1$ hash has no salt".to_owned())?;
            if salt.len() > 8 || hash.len() != 22 {
                return Err("the $apr1$ hash is malformed".to_owned());
            }
            Ok(PasswordHash::Apr1 {
                salt: salt.to_owned(),
                hash: hash.to_owned(),
            })
        } else if text.starts_with("$5$") || text.starts_with("$6$") {
            Err("SHA-256/SHA-512 crypt hashes are not supported".to_owned())
        } else if text.starts_with('$') {
            Err("unknown hash scheme".to_owned())
        } else {
            Err("plain-text and crypt(3) passwords are not supported".to_owned())
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Sha1(digest) => {
                let candidate: [u8; 20] = sha1::Sha1::digest(password).into();
                bool::from(candidate.ct_eq(digest))
            }
            PasswordHash::Apr1 { salt, hash } => {
                let candidate = apr1(password, salt.as_bytes());
                bool::from(candidate.as_bytes().ct_eq(hash.as_bytes()))
            }
        }
    }

    /// Whether verifying is slow enough to be worth remembering.
    fn is_slow(&self) -> bool {
        matches!(self, PasswordHash::Bcrypt(_))
    }

    /// How expensive verifying is, for ranking: bcrypt by its cost, then `$apr1$`, then SHA-1.
    fn cost_rank(&self) -> u32 {
        match self {
            PasswordHash::Bcrypt(hash) => {
                100 + hash
                    .parse::<bcrypt::HashParts>()
                    .map_or(0, |parts| parts.get_cost())
            }
            PasswordHash::Apr1 { .. } => 1,
            PasswordHash::Sha1(_) => 0,
        }
    }
}

/// The users of an htpasswd file (`user:hash` lines). Supported hashes: bcrypt (`htpasswd -B`),
/// `{SHA}` (`htpasswd -s`) and Apache MD5 `$apr1$` (`htpasswd`'s default).
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, PasswordHash>,
}

/// An htpasswd file that cannot be used (the message names the line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HtpasswdError(String);

impl Htpasswd {
    /// Reads and parses the htpasswd file at `path`.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            HtpasswdError(format!("cannot read htpasswd file {}: {e}", path.display()))
        })?;
        Htpasswd::parse(&text)
            .map_err(|HtpasswdError(e)| HtpasswdError(format!("{}: {e}", path.display())))
    }

    /// Parses htpasswd text. Blank lines and `#` comments are skipped; any other line must be
    /// `user:hash` with a supported hash, or the whole file is refused.
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| HtpasswdError(format!("line {number}: expected user:hash")))?;
            if user.is_empty() {
                return Err(HtpasswdError(format!("line {number}: empty user name")));
            }
            let hash = PasswordHash::parse(hash).map_err(|e| {
                HtpasswdError(format!(
                    "line {number} (user {user:?}): {e}; create entries with `htpasswd -B` \
                     (bcrypt), `htpasswd -s` ({{SHA}}) or `htpasswd -m` ($apr1$)"
                ))
            })?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(HtpasswdError(format!(
                    "line {number}: user {user:?} appears twice"
                )));
            }
        }
        Ok(Htpasswd { users })
    }

    /// How many users the file names.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file names no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s (always the full, slow check).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.get(user).is_some_and(|hash| hash.verify(password))
    }

    fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// The hash that is slowest to verify (any one of them if several tie).
    fn slowest(&self) -> Option<&PasswordHash> {
        self.users.values().max_by_key(|hash| hash.cost_rank())
    }
}

/// Apache's MD5-crypt (`$apr1$`), as `htpasswd -m` writes it: the 22-character hash part.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest as _, Md5};
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];

    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();

    let mut context = Md5::new();
    context.update(password);
    context.update(MAGIC);
    context.update(salt);
    for chunk in (0..password.len()).step_by(16) {
        context.update(&alternate[..(password.len() - chunk).min(16)]);
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = context.finalize();

    for round in 0..1000 {
        let mut context = Md5::new();
        if round & 1 == 1 {
            context.update(password);
        } else {
            context.update(digest);
        }
        if round % 3 != 0 {
            context.update(salt);
        }
        if round % 7 != 0 {
            context.update(password);
        }
        if round & 1 == 1 {
            context.update(digest);
        } else {
            context.update(password);
        }
        digest = context.finalize();
    }

    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |value: u32, chars: usize| {
        let mut value = value;
        for _ in 0..chars {
            out.push(ALPHABET[(value & 0x3f) as usize] as char);
            value >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    push((d(0) << 16) | (d(6) << 8) | d(12), 4);
    push((d(1) << 16) | (d(7) << 8) | d(13), 4);
    push((d(2) << 16) | (d(8) << 8) | d(14), 4);
    push((d(3) << 16) | (d(9) << 8) | d(15), 4);
    push((d(4) << 16) | (d(10) << 8) | d(5), 4);
    push(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt SALT PASSWORD`
        assert_eq!(apr1(b"secret pass", b"abcdefgh"), "ZAdX7G.l3eDbgTYbm5ePE0");
        assert_eq!(apr1(b"", b"Zx9"), "/7rp3O9fTu5.uy2ZiR1Z8/");
        assert_eq!(
            apr1(b"a-longer-password-beyond-sixteen-bytes", b"xxxxxxxx"),
            "BhO/3RgjTj3qBT5b3W3EC/"
        );
    }

    #[test]
    fn htpasswd_verifies_each_supported_scheme() {
        let bcrypt_hash = bcrypt::hash("bcrypt pw", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        let text = format!(
            "# comment\n\nbea:{bcrypt_hash}\nsam:{{SHA}}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n\
             ada:$apr1$abcdefgh$ZAdX7G.l3eDbgTYbm5ePE0\n"
        );
        let users = Htpasswd::parse(&text).unwrap();
        assert_eq!(users.len(), 3);
        assert!(users.verify("bea", b"bcrypt pw"));
        assert!(!users.verify("bea", b"bcrypt pX"));
        assert!(users.verify("sam", b"hunter2"));
        assert!(!users.verify("sam", b"hunter3"));
        assert!(users.verify("ada", b"secret pass"));
        assert!(!users.verify("ada", b"secret"));
        assert!(!users.verify("nobody", b"hunter2"));
    }

    #[test]
    fn htpasswd_refuses_unsupported_lines() {
        for (line, needle) in [
            ("joe:plaintext", "plain-text"),
            ("joe:abJnggxhB/yWI", "crypt(3)"),
            ("joe:$6$salt$hash", "SHA-256/SHA-512"),
            ("joe:$1$salt$hash", "unknown hash"),
            ("joe:{SHA}not base64!", "base64"),
            ("joe:{SHA}AAAA", "20 bytes"),
            ("joe:$2y$05$short", "bcrypt"),
            ("no colon here", "user:hash"),
            (":{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=", "empty user"),
        ] {
            let error = Htpasswd::parse(line).err().unwrap().to_string();
            assert!(error.contains(needle), "{line:?}: {error}");
            assert!(error.contains("line 1"), "{line:?}: {error}");
        }
        let twice = "a:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\na:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=";
        assert!(Htpasswd::parse(twice).is_err());
    }

    #[tokio::test]
    async fn open_policy_lets_everything_through() {
        let auth = Auth::new(None, None, false);
        assert!(!auth.is_enabled());
        assert_eq!(auth.check(None, Access::Write).await, Ok(()));
        assert_eq!(auth.check(Some(b"garbage"), Access::Write).await, Ok(()));
    }

    #[tokio::test]
    async fn token_is_accepted_as_bearer_or_basic_password() {
        let auth = Auth::new(Some("s3cret"), None, false);
        assert_eq!(
            auth.check(Some(b"Bearer s3cret"), Access::Write).await,
            Ok(())
        );
        assert_eq!(
            auth.check(Some(b"bearer  s3cret "), Access::Write).await,
            Ok(())
        );
        assert_eq!(
            auth.check(Some(&basic("anyone", "s3cret")), Access::Write)
                .await,
            Ok(())
        );
        assert_eq!(
            auth.check(Some(b"Bearer s3cre"), Access::Read).await,
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(b"Bearer s3cret2"), Access::Read).await,
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(&basic("s3cret", "x")), Access::Read).await,
            Err(Denied::Invalid)
        );
        assert_eq!(auth.check(None, Access::Read).await, Err(Denied::Missing));
        assert_eq!(
            auth.check(Some(b"Basic !!!"), Access::Read).await,
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"Basic Zm9v"), Access::Read).await,
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"Digest x"), Access::Read).await,
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"s3cret"), Access::Read).await,
            Err(Denied::Malformed)
        );
    }

    #[tokio::test]
    async fn htpasswd_users_and_remembered_bcrypt() {
        let auth = bcrypt_auth();
        assert_eq!(
            auth.check(Some(&basic("bea", "pw")), Access::Write).await,
            Ok(())
        );
        // Second time from the remembered digest; a wrong password still fails afterwards.
        assert_eq!(
            auth.check(Some(&basic("bea", "pw")), Access::Write).await,
            Ok(())
        );
        assert_eq!(
            auth.check(Some(&basic("bea", "pX")), Access::Write).await,
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(&basic("bob", "pw")), Access::Write).await,
            Err(Denied::Invalid)
        );
        // No token configured: a bearer value is never accepted.
        assert_eq!(
            auth.check(Some(b"Bearer pw"), Access::Read).await,
            Err(Denied::Invalid)
        );
    }

    #[tokio::test]
    async fn unauthenticated_reads_only_when_allowed_and_only_without_credentials() {
        let strict = Auth::new(Some("t"), None, false);
        assert_eq!(strict.check(None, Access::Read).await, Err(Denied::Missing));
        let relaxed = Auth::new(Some("t"), None, true);
        assert_eq!(relaxed.check(None, Access::Read).await, Ok(()));
        assert_eq!(
            relaxed.check(None, Access::Write).await,
            Err(Denied::Missing)
        );
        assert_eq!(
            relaxed.check(Some(b"Bearer wrong"), Access::Read).await,
            Err(Denied::Invalid)
        );
        assert_eq!(
            relaxed.check(Some(b"Bearer t"), Access::Write).await,
            Ok(())
        );
    }

    /// User `bea` with bcrypt password "pw" (cost 4: fast enough for tests) and `sam` with a
    /// `{SHA}` hash of "hunter2".
    fn bcrypt_auth() -> Auth {
        bcrypt_auth_costing(4)
    }

    fn bcrypt_auth_costing(cost: u32) -> Auth {
        let hash = bcrypt::hash("pw", cost).unwrap();
        let text = format!("bea:{hash}\nsam:{{SHA}}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n");
        Auth::new(None, Some(Htpasswd::parse(&text).unwrap()), false)
    }

    #[tokio::test]
    async fn bcrypt_verdicts_good_and_bad_are_remembered() {
        let auth = bcrypt_auth();
        let check = |user: &'static str, password: &'static str| {
            let auth = auth.clone();
            async move {
                auth.check(Some(&basic(user, password)), Access::Write)
                    .await
            }
        };
        for _ in 0..3 {
            assert_eq!(check("bea", "pw").await, Ok(()));
        }
        assert_eq!(auth.slow_verifications(), 1);
        // A wrong password is verified once too, however often it is repeated.
        for _ in 0..3 {
            assert_eq!(check("bea", "wrong").await, Err(Denied::Invalid));
        }
        assert_eq!(auth.slow_verifications(), 2);
        // A verdict is for one user and one password: the right password of another name is
        // checked (and refused) afresh.
        assert_eq!(check("bee", "pw").await, Err(Denied::Invalid));
        assert_eq!(auth.slow_verifications(), 3);
        assert_eq!(check("bea", "pw").await, Ok(()));
        assert_eq!(auth.slow_verifications(), 3);
        // Fast hashes are simply verified each time.
        assert_eq!(check("sam", "hunter2").await, Ok(()));
        assert_eq!(auth.slow_verifications(), 3);
    }

    /// An unknown user costs a bcrypt like a known one (the slowest hash of the file, whose
    /// verdict is ignored: even the password of that hash's user is refused for another name).
    #[tokio::test]
    async fn unknown_users_cost_a_bcrypt_and_are_refused() {
        let auth = bcrypt_auth();
        for (user, password) in [("nobody", "x"), ("nobody", "pw"), ("sam", "pw")] {
            let before = auth.slow_verifications();
            assert_eq!(
                auth.check(Some(&basic(user, password)), Access::Write)
                    .await,
                Err(Denied::Invalid),
                "{user}"
            );
            let ran = auth.slow_verifications() - before;
            assert_eq!(ran, u64::from(user == "nobody"), "{user}");
        }
        let not_utf8 = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b"\xff\xfe:pw")
        );
        assert_eq!(
            auth.check(Some(not_utf8.as_bytes()), Access::Write).await,
            Err(Denied::Invalid)
        );
        assert_eq!(auth.slow_verifications(), 3);
        // Without any slow hash in the file there is nothing to imitate.
        let sha_only = Htpasswd::parse("sam:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=").unwrap();
        let auth = Auth::new(None, Some(sha_only), false);
        assert_eq!(
            auth.check(Some(&basic("nobody", "x")), Access::Write).await,
            Err(Denied::Invalid)
        );
        assert_eq!(auth.slow_verifications(), 0);
    }

    /// bcrypt does not run on the task that asked: the first poll of a check hands the work to
    /// the blocking pool and returns pending (run in place, it would finish in that poll).
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn bcrypt_runs_off_the_async_workers() {
        // Costly enough (tens of milliseconds) that the pool cannot finish it before the first
        // poll returns, however loaded the machine (at cost 4 it sometimes did).
        let auth = bcrypt_auth_costing(10);
        let header = basic("bea", "pw");
        let check = auth.check(Some(&header), Access::Write);
        futures::pin_mut!(check);
        assert!(futures::poll!(check.as_mut()).is_pending());
        assert_eq!(check.await, Ok(()));
        assert_eq!(auth.slow_verifications(), 1);
        // A remembered verdict needs no pool: ready at once.
        let again = auth.check(Some(&header), Access::Write);
        futures::pin_mut!(again);
        assert_eq!(
            futures::poll!(again.as_mut()),
            std::task::Poll::Ready(Ok(()))
        );
    }

    #[test]
    fn verdicts_stay_within_their_bound_and_keep_recent_ones() {
        let mut verdicts = Verdicts::new(8);
        let key = |n: u8| [n; 32];
        verdicts.insert(key(0), true);
        for n in 1..100 {
            verdicts.insert(key(n), false);
            assert!(verdicts.len() <= 8, "{}", verdicts.len());
            // Used all along, the first verdict is never forgotten.
            assert_eq!(verdicts.get(&key(0)), Some(true));
        }
        assert_eq!(verdicts.get(&key(99)), Some(false));
        assert_eq!(verdicts.get(&key(1)), None);
    }

    #[test]
    fn debug_shows_no_secrets() {
        let auth = Auth::new(Some("very-secret-token"), None, true);
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
    }
}
