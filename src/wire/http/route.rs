//! Request paths: which resource a path names, parsed strictly.
//!
//! Accepted forms are `/status`, `/metrics`, the status page (`/`, `/ui/`) and its data
//! (`/ui/data`), `/{instance...}/ac/{sha256}` and
//! `/{instance...}/cas/{sha256}`, where the instance (possibly empty) is every segment before the
//! last `ac`/`cas` segment. The engine never turns keys into file names, but a path that looks
//! like an attempt to (a `.` or `..` segment, an empty segment, any percent-encoding) is refused
//! anyway, so no later change can make one reach the disk.

use hyper::StatusCode;

use super::response::HttpError;
use crate::engine::{parse_hash, HASH_LEN};

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// The server's counters.
    Status,
    /// The Prometheus metrics.
    Metrics,
    /// The status page (`/` and `/ui/`).
    Page,
    /// The status page's JSON (`/ui/data`).
    PageData,
    /// A CAS blob by hash. The CAS is shared by every instance, so a prefix is accepted and
    /// ignored.
    Cas {
        /// SHA-256 of the blob.
        hash: [u8; HASH_LEN],
    },
    /// An action-cache entry, kept per instance.
    Ac {
        /// Instance name: the path before `/ac/`, without its leading `/`; may be empty.
        instance: &'a str,
        /// The key Bazel sends: the SHA-256 of the action.
        hash: [u8; HASH_LEN],
    },
}

/// Parses `path` (as sent, before any percent-decoding).
///
/// A malformed path is `400 Bad Request`; a well-formed one naming nothing is `404 Not Found`.
pub(super) fn parse(path: &str) -> Result<Route<'_>, HttpError> {
    if path == "/status" {
        return Ok(Route::Status);
    }
    if path == "/metrics" {
        return Ok(Route::Metrics);
    }
    match path {
        "/" | "/ui/" => return Ok(Route::Page),
        "/ui/data" => return Ok(Route::PageData),
        _ => {}
    }
    if path.contains('%') {
        return Err(bad_path(path, "percent-encoding is not accepted"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad_path(path, "it does not start with '/'"));
    };
    if rest.is_empty() {
        return Err(not_found(path));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
        let why = if bad.is_empty() {
            "it has an empty segment".to_owned()
        } else {
            format!("it has a {bad:?} segment")
        };
        return Err(bad_path(path, &why));
    }
    if matches!(segments.last(), Some(&("ac" | "cas"))) {
        return Err(bad_path(path, "the key after ac/cas is missing"));
    }
    let (before, is_cas, key) = match segments.as_slice() {
        [before @ .., "cas", key] => (before, true, key),
        [before @ .., "ac", key] => (before, false, key),
        _ => return Err(not_found(path)),
    };
    let hash = parse_hash(key)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("bad key in path: {e}")))?;
    if is_cas {
        return Ok(Route::Cas { hash });
    }
    // Segments are non-empty, so the instance is exactly the path text before "/ac/".
    let instance_len = before.iter().map(|s| s.len() + 1).sum::<usize>();
    Ok(Route::Ac {
        instance: &rest[..instance_len.saturating_sub(1)],
        hash,
    })
}

fn bad_path(path: &str, why: &str) -> HttpError {
    let shown: String = path.chars().take(200).collect();
    HttpError::new(
        StatusCode::BAD_REQUEST,
        format!("bad path {shown:?}: {why}"),
    )
}

fn not_found(path: &str) -> HttpError {
    let shown: String = path.chars().take(200).collect();
    HttpError::new(
        StatusCode::NOT_FOUND,
        format!("no resource at {shown:?}; expected [/instance]/ac/<sha256> or [/instance]/cas/<sha256>"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn hash() -> [u8; HASH_LEN] {
        parse_hash(HEX).unwrap()
    }

    fn status_of(path: &str) -> StatusCode {
        parse(path).expect_err(path).into_response().status()
    }

    #[test]
    fn plain_keys() {
        assert_eq!(
            parse(&format!("/cas/{HEX}")).unwrap(),
            Route::Cas { hash: hash() }
        );
        assert_eq!(
            parse(&format!("/ac/{HEX}")).unwrap(),
            Route::Ac {
                instance: "",
                hash: hash()
            }
        );
        assert_eq!(parse("/status").unwrap(), Route::Status);
        assert_eq!(parse("/metrics").unwrap(), Route::Metrics);
        assert_eq!(parse("/").unwrap(), Route::Page);
        assert_eq!(parse("/ui/").unwrap(), Route::Page);
        assert_eq!(parse("/ui/data").unwrap(), Route::PageData);
    }

    #[test]
    fn instance_is_everything_before_the_last_kind_segment() {
        assert_eq!(
            parse(&format!("/main/linux/ac/{HEX}")).unwrap(),
            Route::Ac {
                instance: "main/linux",
                hash: hash()
            }
        );
        assert_eq!(
            parse(&format!("/cas/ac/{HEX}")).unwrap(),
            Route::Ac {
                instance: "cas",
                hash: hash()
            }
        );
        assert_eq!(
            parse(&format!("/x/cas/{HEX}")).unwrap(),
            Route::Cas { hash: hash() }
        );
    }

    #[test]
    fn malformed_keys_are_bad_requests() {
        for key in [
            HEX.to_uppercase(),
            HEX[1..].to_owned(),
            format!("{HEX}0"),
            format!("{}g", &HEX[1..]),
        ] {
            assert_eq!(
                status_of(&format!("/cas/{key}")),
                StatusCode::BAD_REQUEST,
                "{key}"
            );
            assert_eq!(
                status_of(&format!("/ac/{key}")),
                StatusCode::BAD_REQUEST,
                "{key}"
            );
        }
        assert_eq!(status_of("/ac"), StatusCode::BAD_REQUEST);
        assert_eq!(status_of("/x/cas"), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn path_tricks_are_bad_requests() {
        for path in [
            format!("/../cas/{HEX}"),
            format!("/a/./ac/{HEX}"),
            "/cas/..".to_owned(),
            format!("/cas/%2e%2e/{HEX}"),
            format!("/%2e%2e/ac/{HEX}"),
            format!("/cas/{}%33", &HEX[1..]),
            format!("//ac/{HEX}"),
            format!("/ac//{HEX}"),
            format!("/ac/{HEX}/"),
            format!("cas/{HEX}"),
        ] {
            assert_eq!(status_of(&path), StatusCode::BAD_REQUEST, "{path}");
        }
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in [
            "/favicon.ico",
            "/ui/other",
            "/status/x",
            "/a/b/c",
            &format!("/cas/{HEX}/x"),
        ] {
            assert_eq!(status_of(path), StatusCode::NOT_FOUND, "{path}");
        }
    }
}
