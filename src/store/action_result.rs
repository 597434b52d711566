//! What the cache needs to know about an `ActionResult`: the blobs it names, and whether its
//! output paths stay inside the client's output tree. Shared by the validation and completeness
//! layers (the gRPC front end parses digests with the same rules).

use super::{Digest, DigestFunction, Error};
use crate::proto::reapi::{self, ActionResult};

/// Parses a digest under `function` the message must carry; `what` names the field in error
/// messages.
pub fn required_digest(
    function: DigestFunction,
    digest: Option<&reapi::Digest>,
    what: &str,
) -> Result<Digest, Error> {
    let digest = digest.ok_or_else(|| Error::InvalidArgument(format!("{what} is missing")))?;
    parse_digest(function, digest, what)
}

/// Parses a digest under `function`: 64 lowercase hex characters and a size that is not
/// negative.
pub fn parse_digest(
    function: DigestFunction,
    digest: &reapi::Digest,
    what: &str,
) -> Result<Digest, Error> {
    Digest::parse_with(function, &digest.hash, digest.size_bytes)
        .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))
}

/// Every CAS digest `result` names directly (output files, trees, root directories, stdout and
/// stderr), all under `function` (the action's). Fails on a malformed digest or a missing
/// required one.
pub fn referenced_digests(
    function: DigestFunction,
    result: &ActionResult,
) -> Result<Vec<Digest>, Error> {
    let mut out = Vec::new();
    for file in &result.output_files {
        out.push(required_digest(
            function,
            file.digest.as_ref(),
            "output file digest",
        )?);
    }
    for directory in &result.output_directories {
        out.push(required_digest(
            function,
            directory.tree_digest.as_ref(),
            "tree_digest",
        )?);
    }
    let optional = result
        .output_directories
        .iter()
        .map(|d| (&d.root_directory_digest, "root_directory_digest"))
        .chain([
            (&result.stdout_digest, "stdout_digest"),
            (&result.stderr_digest, "stderr_digest"),
        ]);
    for (digest, what) in optional {
        if let Some(digest) = digest {
            out.push(parse_digest(function, digest, what)?);
        }
    }
    Ok(out)
}

/// Every output path of `result`: files, directories and all symlink forms.
// The deprecated pre-2.1 symlink fields are what Bazel 4 still sends, so they count too.
#[allow(deprecated)]
pub fn output_paths(result: &ActionResult) -> impl Iterator<Item = &str> {
    result
        .output_files
        .iter()
        .map(|f| f.path.as_str())
        .chain(result.output_directories.iter().map(|d| d.path.as_str()))
        .chain(
            result
                .output_symlinks
                .iter()
                .chain(&result.output_file_symlinks)
                .chain(&result.output_directory_symlinks)
                .map(|s| s.path.as_str()),
        )
}

/// `Ok` when `path` is relative and normalized: no leading `/`, no empty, `.` or `..`
/// component, no NUL. A client writes each output at its path under its output root, so any
/// other form could make every client that hits the entry write outside that root.
pub fn check_output_path(path: &str) -> Result<(), Error> {
    let refuse = |why: &str| {
        let shown: String = path.chars().take(200).collect();
        Err(Error::InvalidArgument(format!(
            "output path {shown:?} {why}; output paths must be relative and normalized"
        )))
    };
    if path.is_empty() {
        return refuse("is empty");
    }
    if path.starts_with('/') {
        return refuse("is absolute");
    }
    if path.contains('\0') {
        return refuse("contains a NUL byte");
    }
    match path.split('/').find(|c| matches!(*c, "" | "." | "..")) {
        Some("") => refuse("has an empty component"),
        Some(component) => refuse(&format!("has a {component:?} component")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_must_stay_inside_the_output_tree() {
        for good in ["a", "bazel-out/k8/bin/x.o", "a.b/c..d/.hidden", "x/y z"] {
            assert!(check_output_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(
                matches!(check_output_path(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
