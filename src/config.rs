//! The `hoard` command line, and where each setting comes from.
//!
//! Every `hoard serve` flag can be given three ways, and the first that is present wins:
//!
//! 1. on the command line (`--max-size 50G`);
//! 2. as an environment variable: `HOARD_` and the flag name in upper case with `_` for `-`
//!    (`HOARD_MAX_SIZE=50G`);
//! 3. in the TOML file named by `--config` (or `HOARD_CONFIG`), whose keys are the flag names,
//!    kebab-case or snake_case alike (`max-size = "50G"` or `max_size = "50G"`). Strings,
//!    integers and booleans are accepted (`max_size = 1073741824`, `no_http = true`); an unknown
//!    key is an error. Relative paths are relative to the working directory, as on the command
//!    line.
//!
//! and otherwise the default applies. [`parse_from`] does the merging; [`ServeArgs::resolve`]
//! turns the result into a [`ServeConfig`], reading the htpasswd and TLS files.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::auth::{Auth, Htpasswd};
use crate::engine::EngineConfig;
use crate::server::{self, parse_size, ServeConfig};
use crate::store::stack::StackConfig;
use crate::tier::{TierConfig, TierMode};
use crate::tls::TlsConfig;
use crate::wire::grpc::GrpcConfig;
use crate::wire::http::HttpConfig;

/// A remote build cache for Bazel (REAPI v2 gRPC and the HTTP cache protocol).
// No `Debug` on these: they hold the auth token.
#[derive(Parser)]
#[command(name = "hoard", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the cache server.
    #[command(
        long_about = "Run the cache server.\n\n\
            Every option can also be set with an environment variable (shown as [env: ...]) or \
            in the TOML file given with --config, whose keys are the option names (max-size or \
            max_size). The command line wins over the environment, which wins over the file.",
        after_help = "Bazel: --remote_cache=grpc://HOST:9092 or http://HOST:8080 (grpcs:// and \
            https:// with TLS). Credentials: https://user:password@HOST for HTTP; for gRPC \
            --remote_header=Authorization=\"Bearer TOKEN\" (or \"Basic base64(user:password)\")."
    )]
    Serve(Box<ServeArgs>),
    /// Check a data directory offline: every record re-hashed, footers checked against records.
    #[command(
        long_about = "Check a data directory offline: every record of every segment is read and \
            re-hashed, and each sealed segment's footer is checked against the records it names. \
            Prints what is corrupt or orphaned. Refuses a directory a running server holds.\n\n\
            Exit status: 0 no damage, 1 damage found (repaired with --repair), 2 could not run."
    )]
    Verify(VerifyArgs),
}

/// The options of `hoard verify`.
#[derive(clap::Args, Clone, Debug)]
pub struct VerifyArgs {
    /// The data directory to check.
    #[arg(long, env = "HOARD_DIR", value_name = "DIR")]
    pub dir: PathBuf,
    /// Rewrite each damaged segment without its bad records (the intact ones are kept, in
    /// order; each segment is replaced in one rename).
    #[arg(long)]
    pub repair: bool,
}

/// The options of `hoard serve`, grouped as in `--help`.
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// TOML file with default values for any of the options below (keys are option names).
    #[arg(
        long,
        env = "HOARD_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration"
    )]
    pub config: Option<PathBuf>,

    // --- storage ---
    /// Data directory [default: $XDG_CACHE_HOME/hoard or ~/.cache/hoard]. One server per
    /// directory: a lock file enforces it.
    #[arg(long, env = "HOARD_DIR", value_name = "DIR", help_heading = "Storage")]
    pub dir: Option<PathBuf>,
    /// Re-hash cold records in the background at about this many bytes per second (e.g. 20M),
    /// dropping those whose bytes went bad, so clients upload them again [default: off].
    #[arg(long, env = "HOARD_SCRUB_RATE", value_name = "SIZE", value_parser = parse_size,
          help_heading = "Storage")]
    pub scrub_rate: Option<u64>,
    /// Refuse HTTP /ac/ values that are not REAPI ActionResults (by default they are kept as
    /// opaque values, which is what ccache stores).
    #[arg(long, env = "HOARD_HTTP_AC_STRICT", help_heading = "Storage")]
    pub http_ac_strict: bool,

    // --- object store ---
    /// Share a bucket with other hoard nodes: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX or file:///DIR. Endpoint, region and credentials come from the
    /// usual variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ALLOW_HTTP; GOOGLE_SERVICE_ACCOUNT; AZURE_STORAGE_ACCOUNT_NAME/KEY).
    #[arg(
        long,
        env = "HOARD_OBJECT_STORE",
        value_name = "URL",
        help_heading = "Object store"
    )]
    pub object_store: Option<String>,
    /// When a write is acknowledged: back (durable locally, uploaded in the background) or
    /// through (also in the bucket).
    #[arg(
        long,
        env = "HOARD_OBJECT_STORE_MODE",
        value_name = "MODE",
        default_value = "back",
        help_heading = "Object store"
    )]
    pub object_store_mode: TierMode,
    /// Bytes of the local log not yet uploaded beyond which writes are refused (RESOURCE_EXHAUSTED
    /// / 503, retried by clients) until the bucket catches up [default: a quarter of
    /// --max-size, else 4G].
    #[arg(long, env = "HOARD_OBJECT_STORE_BACKLOG", value_name = "SIZE",
          value_parser = parse_size, help_heading = "Object store")]
    pub object_store_backlog: Option<u64>,
    /// Records uploaded to the bucket at once.
    #[arg(
        long,
        env = "HOARD_OBJECT_STORE_CONCURRENCY",
        value_name = "N",
        default_value_t = 16,
        help_heading = "Object store"
    )]
    pub object_store_concurrency: usize,

    // --- listeners ---
    /// gRPC (REAPI v2) listen address. Bazel: --remote_cache=grpc://ADDR.
    #[arg(
        long,
        env = "HOARD_GRPC_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:9092",
        help_heading = "Listeners"
    )]
    pub grpc_addr: SocketAddr,
    /// HTTP cache listen address. Bazel: --remote_cache=http://ADDR; ccache:
    /// remote_storage = http://ADDR/cache|layout=bazel.
    #[arg(
        long,
        env = "HOARD_HTTP_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        help_heading = "Listeners"
    )]
    pub http_addr: SocketAddr,
    /// Do not serve HTTP.
    #[arg(long, env = "HOARD_NO_HTTP", help_heading = "Listeners")]
    pub no_http: bool,

    // --- limits ---
    /// Byte budget for the cache on disk, e.g. 50G; least recently used entries are evicted
    /// to stay within it [default: unbounded].
    #[arg(long, env = "HOARD_MAX_SIZE", value_name = "SIZE", value_parser = parse_size,
          help_heading = "Limits")]
    pub max_size: Option<u64>,
    /// Largest single blob accepted, e.g. 2G.
    #[arg(long, env = "HOARD_MAX_BLOB_SIZE", value_name = "SIZE", value_parser = parse_size,
          default_value = "64G", help_heading = "Limits")]
    pub max_blob_size: u64,

    // --- connections ---
    /// Most connections open at once, per listener; more are refused (HTTP 503, gRPC GOAWAY)
    /// and closed. Each takes a file descriptor: keep it below the process's limit (ulimit -n).
    #[arg(
        long,
        env = "HOARD_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 4096,
        help_heading = "Connections"
    )]
    pub max_connections: usize,
    /// How long an HTTP connection may take to send a request's headers, idle keep-alive
    /// connections included (e.g. 30s, 1m).
    #[arg(long, env = "HOARD_HTTP_HEADER_TIMEOUT", value_name = "DURATION",
          value_parser = parse_duration, default_value = "60s", help_heading = "Connections")]
    pub http_header_timeout: Duration,
    /// How long a request body (HTTP PUT, gRPC request stream) may send nothing while the server
    /// waits for it; the request then fails and its upload is discarded.
    #[arg(long, env = "HOARD_BODY_TIMEOUT", value_name = "DURATION",
          value_parser = parse_duration, default_value = "60s", help_heading = "Connections")]
    pub body_timeout: Duration,
    /// How long a new gRPC connection may take to finish its TLS handshake and HTTP/2 preface.
    #[arg(long, env = "HOARD_GRPC_HANDSHAKE_TIMEOUT", value_name = "DURATION",
          value_parser = parse_duration, default_value = "10s", help_heading = "Connections")]
    pub grpc_handshake_timeout: Duration,
    /// How long a gRPC connection may go without a call before it is sent a GOAWAY and closed
    /// (clients reconnect for their next call).
    #[arg(long, env = "HOARD_GRPC_IDLE_TIMEOUT", value_name = "DURATION",
          value_parser = parse_duration, default_value = "10m", help_heading = "Connections")]
    pub grpc_idle_timeout: Duration,
    /// How often an HTTP/2 PING checks that a gRPC client still answers (it has 20 s to);
    /// 0 turns the checks off.
    #[arg(long, env = "HOARD_GRPC_KEEPALIVE_INTERVAL", value_name = "DURATION",
          value_parser = parse_duration, default_value = "60s", help_heading = "Connections")]
    pub grpc_keepalive_interval: Duration,
    /// HTTP/2 flow-control window of one gRPC stream: the most bytes of one upload buffered
    /// before the service reads them (e.g. 1M).
    #[arg(long, env = "HOARD_GRPC_STREAM_WINDOW", value_name = "SIZE", value_parser = parse_window,
          default_value = "1M", help_heading = "Connections")]
    pub grpc_stream_window: u32,
    /// HTTP/2 flow-control window of one gRPC connection, all its streams together.
    #[arg(long, env = "HOARD_GRPC_CONNECTION_WINDOW", value_name = "SIZE",
          value_parser = parse_window, default_value = "16M", help_heading = "Connections")]
    pub grpc_connection_window: u32,

    // --- authentication ---
    /// Require this bearer token: "Authorization: Bearer TOKEN", or basic auth with TOKEN as
    /// the password and any user name. Prefer HOARD_AUTH_TOKEN or the config file: command
    /// lines are visible to other users.
    #[arg(
        long,
        env = "HOARD_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        help_heading = "Authentication"
    )]
    pub auth_token: Option<String>,
    /// Require basic auth with a user of this htpasswd file (bcrypt `htpasswd -B`, SHA-1
    /// `htpasswd -s` or MD5 `htpasswd -m` entries).
    #[arg(
        long,
        env = "HOARD_HTPASSWD",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub htpasswd: Option<PathBuf>,
    /// Let requests that only read (HTTP GET/HEAD; gRPC GetCapabilities, GetActionResult,
    /// FindMissingBlobs, BatchReadBlobs, GetTree, SplitBlob, ByteStream Read) through without
    /// credentials.
    #[arg(
        long,
        env = "HOARD_ALLOW_UNAUTHENTICATED_READS",
        help_heading = "Authentication"
    )]
    pub allow_unauthenticated_reads: bool,

    // --- TLS ---
    /// PEM certificate chain (leaf first): serve gRPC and HTTP over TLS (grpcs://, https://).
    #[arg(long, env = "HOARD_TLS_CERT", value_name = "PEM", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HOARD_TLS_KEY", value_name = "PEM", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require clients to present a certificate they signed (mutual TLS).
    #[arg(
        long,
        env = "HOARD_TLS_CLIENT_CA",
        value_name = "PEM",
        help_heading = "TLS"
    )]
    pub tls_client_ca: Option<PathBuf>,

    // --- logging ---
    /// Log filter (tracing EnvFilter syntax): error, warn, info, debug, or per module, e.g.
    /// "info,hoard::access=off". Logs go to stderr.
    #[arg(
        long,
        env = "HOARD_LOG",
        value_name = "FILTER",
        default_value = "info",
        help_heading = "Logging"
    )]
    pub log: String,
    /// Log one line per request (method, resource, status, bytes, duration). Turn off with
    /// --access-log=false.
    #[arg(
        long,
        env = "HOARD_ACCESS_LOG",
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        help_heading = "Logging"
    )]
    pub access_log: bool,
}

/// A command line (with its environment and config file) that cannot be used.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own: usage errors, and `--help` / `--version` (see [`clap::Error::exit`]).
    Cli(clap::Error),
    /// The config file could not be read or holds an unknown key or a bad value.
    File(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Cli(e) => e.fmt(f),
            ParseError::File(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ParseError {}

impl From<clap::Error> for ParseError {
    fn from(error: clap::Error) -> ParseError {
        ParseError::Cli(error)
    }
}

/// Parses a command line (`args[0]` is the program name), filling what neither it nor the
/// environment sets from the `--config` file.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    if let Some(("serve", serve)) = matches.subcommand() {
        if let Some(path) = serve.get_one::<PathBuf>("config") {
            let serve_command = command
                .find_subcommand("serve")
                .expect("serve is a subcommand");
            args.extend(file_args(path, serve_command, serve)?);
        }
    }
    let matches = command.try_get_matches_from(&args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The flags that stand for the settings in the config file at `path` which neither the command
/// line nor the environment set.
fn file_args(
    path: &Path,
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<Vec<OsString>, ParseError> {
    let error = |message: String| ParseError::File(format!("{}: {message}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e| error(format!("not TOML: {e}")))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name.as_str()))
            .filter(|arg| !matches!(arg.get_id().as_str(), "config" | "help" | "version"))
            .ok_or_else(|| error(format!("unknown setting {key:?}")))?;
        let set_elsewhere = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_elsewhere {
            continue;
        }
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            other => {
                return Err(error(format!(
                    "{key}: expected a string, number or boolean, not {}",
                    other.type_str()
                )))
            }
        };
        if arg.get_action().takes_values() {
            args.push(format!("--{name}={text}").into());
        } else {
            // A switch: `true` turns it on; `false` is its default anyway.
            match text.as_str() {
                "true" => args.push(format!("--{name}").into()),
                "false" => {}
                _ => return Err(error(format!("{key}: expected true or false"))),
            }
        }
    }
    Ok(args)
}

impl ServeArgs {
    /// The server configuration these options describe: reads the htpasswd and TLS files.
    /// Returns warnings worth logging alongside (e.g. credentials without TLS).
    pub fn resolve(&self) -> Result<(ServeConfig, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut engine =
            EngineConfig::new(self.dir.clone().unwrap_or_else(server::default_data_dir));
        engine.max_size = self.max_size;
        engine.max_blob_size = self.max_blob_size;
        engine.scrub_rate = self.scrub_rate.filter(|&rate| rate > 0);

        let htpasswd = self
            .htpasswd
            .as_deref()
            .map(Htpasswd::load)
            .transpose()
            .map_err(|e| e.to_string())?;
        if htpasswd.as_ref().is_some_and(Htpasswd::is_empty) {
            return Err("the htpasswd file names no users".to_owned());
        }
        if self.auth_token.as_deref() == Some("") {
            return Err("the auth token is empty".to_owned());
        }
        let auth = Auth::new(
            self.auth_token.as_deref(),
            htpasswd,
            self.allow_unauthenticated_reads,
        );
        if self.allow_unauthenticated_reads && !auth.is_enabled() {
            warnings.push(
                "--allow-unauthenticated-reads has no effect without --auth-token or --htpasswd"
                    .to_owned(),
            );
        }

        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                TlsConfig::load(cert, key, self.tls_client_ca.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
            (None, None) if self.tls_client_ca.is_none() => None,
            (None, None) => return Err("--tls-client-ca needs --tls-cert and --tls-key".to_owned()),
            _ => return Err("--tls-cert and --tls-key go together".to_owned()),
        };
        if auth.is_enabled() && tls.is_none() {
            warnings.push(
                "authentication without TLS: credentials cross the network in clear text"
                    .to_owned(),
            );
        }

        let mut grpc = GrpcConfig {
            auth: auth.clone(),
            tls: tls.clone(),
            max_connections: self.max_connections,
            handshake_timeout: self.grpc_handshake_timeout,
            idle_timeout: self.grpc_idle_timeout,
            keepalive_interval: Some(self.grpc_keepalive_interval).filter(|d| !d.is_zero()),
            body_timeout: self.body_timeout,
            stream_window: self.grpc_stream_window,
            connection_window: self.grpc_connection_window,
            ..GrpcConfig::default()
        };
        let mut http = HttpConfig {
            ac_strict: self.http_ac_strict,
            auth,
            tls,
            header_timeout: self.http_header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            ..HttpConfig::default()
        };
        grpc.access_log = self.access_log;
        http.access_log = self.access_log;
        let object_store = self.object_store.as_ref().map(|url| {
            let mut tier = TierConfig::new(url);
            tier.mode = self.object_store_mode;
            tier.upload_concurrency = self.object_store_concurrency.max(1);
            tier.backlog_budget = self
                .object_store_backlog
                .or(self.max_size.map(|budget| budget / 4))
                .unwrap_or(tier.backlog_budget);
            tier
        });
        let config = ServeConfig {
            engine,
            stack: StackConfig {
                object_store,
                ..StackConfig::default()
            },
            grpc_addr: self.grpc_addr,
            http_addr: (!self.no_http).then_some(self.http_addr),
            grpc,
            http,
        };
        Ok((config, warnings))
    }
}

/// Parses an HTTP/2 window size: a size (see [`parse_size`]) from 64 KiB (the protocol's
/// default) to 2 GiB - 1 (its maximum).
fn parse_window(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    if !(65_535..=(1 << 31) - 1).contains(&size) {
        return Err(format!("{text:?}: a window is from 64K to 2G - 1"));
    }
    Ok(size as u32)
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 30s, 10m, 500ms, 1h)"))?;
    let millis = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
