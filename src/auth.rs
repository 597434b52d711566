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
//! length leaks), htpasswd hashes byte by byte with [`subtle`]. bcrypt is slow on purpose, so a
//! password that verified once is remembered (as a keyed SHA-256) and later requests with the
//! same password skip bcrypt.
//!
//! The checks are plain functions over the header value: the gRPC services and the HTTP handler
//! call them directly, so they run the same in the simulator as in production.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// What a request does, for `--allow-unauthenticated-reads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only reads: GET/HEAD, FindMissingBlobs, BatchReadBlobs, GetActionResult, GetTree,
    /// ByteStream Read, GetCapabilities, health checks.
    Read,
    /// Writes (or reveals upload state): PUT, BatchUpdateBlobs, UpdateActionResult,
    /// ByteStream Write and QueryWriteStatus.
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
    allow_unauthenticated_reads: bool,
    /// Passwords that verified against a slow hash: user → keyed SHA-256 of the password.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Per-process key for `verified`, so the remembered digests are useless elsewhere.
    key: [u8; 32],
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
        Auth {
            inner: Some(Arc::new(Policy {
                token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
                users,
                allow_unauthenticated_reads,
                verified: Mutex::new(HashMap::new()),
                key: rand::random(),
            })),
        }
    }

    /// Whether any credentials are required at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Checks a request that does `access`, carrying the `Authorization` value `authorization`.
    pub fn check(&self, authorization: Option<&[u8]>, access: Access) -> Result<(), Denied> {
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
                policy.user_matches(user, password)
            }
        }
        .inspect_err(|denied| tracing::debug!(reason = %denied, "request refused"))
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

    fn user_matches(&self, user: &[u8], password: &[u8]) -> Result<(), Denied> {
        let user = std::str::from_utf8(user).map_err(|_| Denied::Invalid)?;
        let Some(hash) = self.users.get(user) else {
            return Err(Denied::Invalid);
        };
        let remembered = self.remembered(user, password);
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = verified.get(user) {
                if bool::from(known.ct_eq(&remembered)) {
                    return Ok(());
                }
            }
        }
        if !hash.verify(password) {
            return Err(Denied::Invalid);
        }
        if hash.is_slow() {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user.to_owned(), remembered);
        }
        Ok(())
    }

    fn remembered(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((user.len() as u64).to_le_bytes());
        hasher.update(user.as_bytes());
        hasher.update(password);
        hasher.finalize().into()
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

    #[test]
    fn open_policy_lets_everything_through() {
        let auth = Auth::new(None, None, false);
        assert!(!auth.is_enabled());
        assert_eq!(auth.check(None, Access::Write), Ok(()));
        assert_eq!(auth.check(Some(b"garbage"), Access::Write), Ok(()));
    }

    #[test]
    fn token_is_accepted_as_bearer_or_basic_password() {
        let auth = Auth::new(Some("s3cret"), None, false);
        assert_eq!(auth.check(Some(b"Bearer s3cret"), Access::Write), Ok(()));
        assert_eq!(auth.check(Some(b"bearer  s3cret "), Access::Write), Ok(()));
        assert_eq!(
            auth.check(Some(&basic("anyone", "s3cret")), Access::Write),
            Ok(())
        );
        assert_eq!(
            auth.check(Some(b"Bearer s3cre"), Access::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(b"Bearer s3cret2"), Access::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(&basic("s3cret", "x")), Access::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(auth.check(None, Access::Read), Err(Denied::Missing));
        assert_eq!(
            auth.check(Some(b"Basic !!!"), Access::Read),
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"Basic Zm9v"), Access::Read),
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"Digest x"), Access::Read),
            Err(Denied::Malformed)
        );
        assert_eq!(
            auth.check(Some(b"s3cret"), Access::Read),
            Err(Denied::Malformed)
        );
    }

    #[test]
    fn htpasswd_users_and_remembered_bcrypt() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = Htpasswd::parse(&format!("bea:{hash}")).unwrap();
        let auth = Auth::new(None, Some(users), false);
        assert_eq!(auth.check(Some(&basic("bea", "pw")), Access::Write), Ok(()));
        // Second time from the remembered digest; a wrong password still fails afterwards.
        assert_eq!(auth.check(Some(&basic("bea", "pw")), Access::Write), Ok(()));
        assert_eq!(
            auth.check(Some(&basic("bea", "pX")), Access::Write),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(Some(&basic("bob", "pw")), Access::Write),
            Err(Denied::Invalid)
        );
        // No token configured: a bearer value is never accepted.
        assert_eq!(
            auth.check(Some(b"Bearer pw"), Access::Read),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn unauthenticated_reads_only_when_allowed_and_only_without_credentials() {
        let strict = Auth::new(Some("t"), None, false);
        assert_eq!(strict.check(None, Access::Read), Err(Denied::Missing));
        let relaxed = Auth::new(Some("t"), None, true);
        assert_eq!(relaxed.check(None, Access::Read), Ok(()));
        assert_eq!(relaxed.check(None, Access::Write), Err(Denied::Missing));
        assert_eq!(
            relaxed.check(Some(b"Bearer wrong"), Access::Read),
            Err(Denied::Invalid)
        );
        assert_eq!(relaxed.check(Some(b"Bearer t"), Access::Write), Ok(()));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let auth = Auth::new(Some("very-secret-token"), None, true);
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
    }
}
