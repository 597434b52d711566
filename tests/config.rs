//! Where `hoard serve` settings come from: command line over `HOARD_*` environment over the
//! `--config` TOML file over defaults; file keys in kebab-case or snake_case; bad files refused.
//!
//! The environment is process-wide, so every test here holds [`ENV`] while it runs.
#![cfg(not(madsim))]

use std::ffi::OsString;
use std::path::Path;
use std::sync::Mutex;

use clap::CommandFactory;
use hoard::config::{self, Cli, Command, ParseError, ServeArgs};

static ENV: Mutex<()> = Mutex::new(());

/// Every variable a test here sets; cleared before and after each test.
const VARS: &[&str] = &[
    "HOARD_CONFIG",
    "HOARD_DIR",
    "HOARD_MAX_SIZE",
    "HOARD_MAX_BLOB_SIZE",
    "HOARD_GRPC_ADDR",
    "HOARD_HTTP_ADDR",
    "HOARD_NO_HTTP",
    "HOARD_HTTP_AC_STRICT",
    "HOARD_AUTH_TOKEN",
    "HOARD_HTPASSWD",
    "HOARD_ALLOW_UNAUTHENTICATED_READS",
    "HOARD_TLS_CERT",
    "HOARD_TLS_KEY",
    "HOARD_TLS_CLIENT_CA",
    "HOARD_LOG",
    "HOARD_ACCESS_LOG",
    "HOARD_MAX_CONNECTIONS",
    "HOARD_HTTP_HEADER_TIMEOUT",
    "HOARD_BODY_TIMEOUT",
    "HOARD_GRPC_HANDSHAKE_TIMEOUT",
    "HOARD_GRPC_IDLE_TIMEOUT",
    "HOARD_GRPC_KEEPALIVE_INTERVAL",
    "HOARD_GRPC_STREAM_WINDOW",
    "HOARD_SCRUB_RATE",
];

/// Runs `test` with exactly the `env` variables of [`VARS`] set.
fn with_env<R>(env: &[(&str, &str)], test: impl FnOnce() -> R) -> R {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for var in VARS {
        std::env::remove_var(var);
    }
    for (var, value) in env {
        assert!(VARS.contains(var), "add {var} to VARS");
        std::env::set_var(var, value);
    }
    let result = test();
    for var in VARS {
        std::env::remove_var(var);
    }
    result
}

fn parse(args: &[&str]) -> Result<ServeArgs, ParseError> {
    let argv: Vec<OsString> = ["hoard", "serve"]
        .iter()
        .chain(args)
        .map(OsString::from)
        .collect();
    match config::parse_from(argv)?.command {
        Command::Serve(args) => Ok(*args),
        Command::Verify(_) => unreachable!("the command line says serve"),
    }
}

#[test]
fn verify_takes_a_directory_and_repair() {
    let argv = ["hoard", "verify", "--dir", "/data", "--repair"];
    let Command::Verify(args) = config::parse_from(argv).unwrap().command else {
        panic!("not verify");
    };
    assert_eq!(args.dir, Path::new("/data"));
    assert!(args.repair);
    let scrubbing = with_env(&[], || parse(&["--scrub-rate", "20M"]).unwrap());
    assert_eq!(scrubbing.scrub_rate, Some(20 << 20));
    let (config, _) = scrubbing.resolve().unwrap();
    assert_eq!(config.engine.scrub_rate, Some(20 << 20));
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let args = with_env(&[], || parse(&[]).unwrap());
    assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:9092");
    assert_eq!(args.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(args.max_size, None);
    assert_eq!(args.max_blob_size, 64 << 30);
    assert!(!args.no_http && !args.http_ac_strict && !args.allow_unauthenticated_reads);
    assert!(args.access_log);
    assert_eq!(args.log, "info");
    assert_eq!(args.auth_token, None);
}

#[test]
fn command_line_beats_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hoard.toml",
        r#"
            max_size = "1G"          # snake_case
            max-blob-size = "1M"     # kebab-case
            grpc_addr = "127.0.0.1:1001"
            http_addr = "127.0.0.1:2001"
            log = "debug"
        "#,
    );
    let args = with_env(
        &[
            ("HOARD_CONFIG", &file),
            ("HOARD_MAX_SIZE", "2G"),
            ("HOARD_MAX_BLOB_SIZE", "2M"),
            ("HOARD_GRPC_ADDR", "127.0.0.1:1002"),
        ],
        || parse(&["--max-size", "3G"]).unwrap(),
    );
    assert_eq!(args.max_size, Some(3 << 30), "command line wins");
    assert_eq!(args.max_blob_size, 2 << 20, "environment beats the file");
    assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:1002");
    assert_eq!(
        args.http_addr.to_string(),
        "127.0.0.1:2001",
        "file beats default"
    );
    assert_eq!(args.log, "debug");

    // The same file named on the command line, nothing in the environment.
    let args = with_env(&[], || parse(&["--config", &file]).unwrap());
    assert_eq!(args.max_size, Some(1 << 30));
    assert_eq!(args.max_blob_size, 1 << 20);
    assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:1001");
}

#[test]
fn booleans_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hoard.toml",
        "no_http = true\nhttp-ac-strict = false\naccess_log = false\n\
         allow_unauthenticated_reads = true\n",
    );
    let args = with_env(&[], || parse(&["--config", &file]).unwrap());
    assert!(args.no_http);
    assert!(!args.http_ac_strict);
    assert!(!args.access_log);
    assert!(args.allow_unauthenticated_reads);

    // The environment and the command line override the file's access_log = false.
    let args = with_env(&[("HOARD_ACCESS_LOG", "true")], || {
        parse(&["--config", &file]).unwrap()
    });
    assert!(args.access_log);
    let args = with_env(&[], || parse(&["--config", &file, "--access-log"]).unwrap());
    assert!(args.access_log);
    let args = with_env(&[], || parse(&["--access-log=false"]).unwrap());
    assert!(!args.access_log);
    let args = with_env(&[("HOARD_HTTP_AC_STRICT", "true")], || parse(&[]).unwrap());
    assert!(args.http_ac_strict);
}

#[test]
fn integers_and_paths_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hoard.toml",
        "max_size = 1048576\ndir = \"/var/cache/hoard\"\nauth_token = \"from-file\"\n",
    );
    let args = with_env(&[], || parse(&["--config", &file]).unwrap());
    assert_eq!(args.max_size, Some(1 << 20));
    assert_eq!(args.dir.as_deref(), Some(Path::new("/var/cache/hoard")));
    assert_eq!(args.auth_token.as_deref(), Some("from-file"));
    let args = with_env(&[("HOARD_AUTH_TOKEN", "from-env")], || {
        parse(&["--config", &file]).unwrap()
    });
    assert_eq!(args.auth_token.as_deref(), Some("from-env"));
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "max_sise = \"1G\"\n",
            "unknown setting \"max_sise\"",
        ),
        (
            "nested.toml",
            "config = \"other.toml\"\n",
            "unknown setting \"config\"",
        ),
        (
            "table.toml",
            "dir = { path = \"x\" }\n",
            "expected a string",
        ),
        ("syntax.toml", "max_size = \n", "not TOML"),
        (
            "switch.toml",
            "no_http = \"yes\"\n",
            "expected true or false",
        ),
    ];
    for (name, text, needle) in cases {
        let file = write(dir.path(), name, text);
        let error = with_env(&[], || parse(&["--config", &file]))
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        let shown = error.to_string();
        assert!(matches!(error, ParseError::File(_)), "{name}: {shown}");
        assert!(shown.contains(needle), "{name}: {shown}");
        assert!(shown.contains(name), "{name}: {shown}");
    }
    // A bad value is clap's error, naming the flag.
    let file = write(dir.path(), "value.toml", "max_size = \"12X\"\n");
    let error = with_env(&[], || parse(&["--config", &file])).err().unwrap();
    assert!(matches!(error, ParseError::Cli(_)));
    assert!(error.to_string().contains("--max-size"), "{error}");
    // A missing file.
    let missing = dir.path().join("missing.toml").display().to_string();
    let error = with_env(&[], || parse(&["--config", &missing]))
        .err()
        .unwrap();
    assert!(error.to_string().contains("cannot read"), "{error}");
}

/// Connection limits reach both front ends, from each source; the defaults bound slow clients.
#[test]
fn connection_limits_from_every_source() {
    use std::time::Duration;
    let (config, _) = with_env(&[], || parse(&[]).unwrap().resolve().unwrap());
    assert!(config.http.header_timeout <= Duration::from_secs(60));
    assert_eq!(config.http.body_timeout, Duration::from_secs(60));
    assert_eq!(config.grpc.idle_timeout, Duration::from_secs(600));
    assert_eq!(config.grpc.handshake_timeout, Duration::from_secs(10));
    assert_eq!(
        config.grpc.keepalive_interval,
        Some(Duration::from_secs(60))
    );
    assert_eq!(config.http.max_connections, 4096);
    assert_eq!(config.grpc.max_connections, 4096);
    assert_eq!(config.grpc.stream_window, 1 << 20);
    assert_eq!(config.grpc.connection_window, 16 << 20);

    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hoard.toml",
        "max_connections = 100\nbody-timeout = \"5s\"\ngrpc_idle_timeout = 120\n",
    );
    let (config, _) = with_env(
        &[
            ("HOARD_HTTP_HEADER_TIMEOUT", "15s"),
            ("HOARD_GRPC_KEEPALIVE_INTERVAL", "0"),
            ("HOARD_GRPC_STREAM_WINDOW", "4M"),
        ],
        || {
            parse(&["--config", &file, "--grpc-handshake-timeout", "500ms"])
                .unwrap()
                .resolve()
                .unwrap()
        },
    );
    assert_eq!(config.http.max_connections, 100);
    assert_eq!(config.grpc.max_connections, 100);
    assert_eq!(config.http.body_timeout, Duration::from_secs(5));
    assert_eq!(config.grpc.body_timeout, Duration::from_secs(5));
    assert_eq!(config.grpc.idle_timeout, Duration::from_secs(120));
    assert_eq!(config.http.header_timeout, Duration::from_secs(15));
    assert_eq!(config.grpc.keepalive_interval, None);
    assert_eq!(config.grpc.handshake_timeout, Duration::from_millis(500));
    assert_eq!(config.grpc.stream_window, 4 << 20);
    let error = with_env(&[], || parse(&["--grpc-stream-window", "1K"]))
        .err()
        .unwrap();
    assert!(error.to_string().contains("64K"), "{error}");
}

#[test]
fn resolve_builds_auth_and_refuses_half_tls() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = write(
        dir.path(),
        "htpasswd",
        "sam:{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=\n",
    );
    let (config, warnings) = with_env(&[], || {
        parse(&["--htpasswd", &htpasswd, "--dir", "/tmp/x", "--no-http"])
            .unwrap()
            .resolve()
            .unwrap()
    });
    assert!(config.grpc.auth.is_enabled() && config.http.auth.is_enabled());
    assert!(config.http_addr.is_none());
    assert!(
        warnings.iter().any(|w| w.contains("clear text")),
        "{warnings:?}"
    );

    let (config, _) = with_env(&[], || parse(&[]).unwrap().resolve().unwrap());
    assert!(!config.grpc.auth.is_enabled());
    assert!(config.grpc.tls.is_none());

    let error = with_env(&[], || {
        parse(&["--tls-cert", "/nonexistent.pem"])
            .unwrap()
            .resolve()
            .unwrap_err()
    });
    assert!(error.contains("--tls-key"), "{error}");

    let plain = write(dir.path(), "plain", "joe:secret\n");
    let error = with_env(&[], || {
        parse(&["--htpasswd", &plain])
            .unwrap()
            .resolve()
            .unwrap_err()
    });
    assert!(error.contains("plain-text"), "{error}");
}

#[test]
fn help_groups_options_like_bazel_remote() {
    let mut command = Cli::command();
    let serve = command.find_subcommand_mut("serve").unwrap();
    let help = serve.render_long_help().to_string();
    let mut at = 0;
    for heading in [
        "Configuration:",
        "Storage:",
        "Listeners:",
        "Limits:",
        "Connections:",
        "Authentication:",
        "TLS:",
        "Logging:",
    ] {
        let found = help[at..]
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} missing or out of order in:\n{help}"));
        at += found;
    }
    for flag in [
        "--auth-token",
        "--htpasswd",
        "--allow-unauthenticated-reads",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--access-log",
        "HOARD_MAX_SIZE",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // The token's value never shows in help, even when set.
    let shown = with_env(&[("HOARD_AUTH_TOKEN", "sekrit")], || {
        Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string()
    });
    assert!(!shown.contains("sekrit"));
}
