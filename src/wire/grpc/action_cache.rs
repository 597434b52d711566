//! The ActionCache service.
//!
//! A hit is only served when every blob the result references is still in the CAS (including the
//! files inside output directory trees): Bazel fails the build on a hit whose outputs it cannot
//! download, whereas a miss just reruns the action.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::digests;
use crate::engine::{AcKind, Digest, Engine};
use crate::proto::reapi::{
    action_cache_server::ActionCache, ActionResult, GetActionResultRequest, Tree,
    UpdateActionResultRequest,
};

/// Serves GetActionResult and UpdateActionResult from the engine's per-instance action cache.
pub struct ActionCacheService {
    engine: Arc<Engine>,
    /// Budget of bytes inlined into one GetActionResult reply.
    max_inline_bytes: usize,
    /// The reply, inlined bytes included, must fit in one gRPC message.
    max_message_size: usize,
}

/// Bytes a length-delimited field may add beyond its payload (tag and length varint).
const FIELD_OVERHEAD: usize = 16;

impl ActionCacheService {
    /// A service over `engine` that inlines at most `max_inline_bytes` per reply.
    pub fn new(engine: Arc<Engine>, max_inline_bytes: usize, max_message_size: usize) -> Self {
        ActionCacheService {
            engine,
            max_inline_bytes,
            max_message_size,
        }
    }

    /// NOT_FOUND unless every blob `result` references is in the CAS.
    async fn check_outputs_present(
        &self,
        action: &Digest,
        result: &ActionResult,
    ) -> Result<(), Status> {
        let gone = |what: String| {
            tracing::debug!(%action, %what, "action result is incomplete; reporting a miss");
            Status::not_found(format!("action result for {action} is incomplete: {what}"))
        };
        let referenced = referenced_digests(result).map_err(|e| gone(e.message().to_owned()))?;
        if let Some(missing) = self.engine.missing(&referenced).first() {
            return Err(gone(format!("blob {missing} is missing")));
        }
        for directory in &result.output_directories {
            let tree = digests::required(directory.tree_digest.as_ref(), "tree_digest")
                .map_err(|e| gone(e.message().to_owned()))?;
            let bytes = self
                .engine
                .read_blob(&tree, 0, tree.size)
                .await
                .map_err(|e| gone(format!("tree {tree}: {e}")))?;
            let tree_files = Tree::decode(bytes)
                .map_err(|e| gone(format!("tree {tree} does not decode: {e}")))
                .and_then(|t| tree_file_digests(&t).map_err(|e| gone(e.message().to_owned())))?;
            if let Some(missing) = self.engine.missing(&tree_files).first() {
                return Err(gone(format!("file {missing} of tree {tree} is missing")));
            }
        }
        Ok(())
    }

    /// Inlines what the client asked for, within the byte budget, and strips inline bytes it did
    /// not ask for (the REAPI says servers should not inline unrequested contents). Bytes with no
    /// digest are the only copy and stay.
    async fn apply_inlining(
        &self,
        result: &mut ActionResult,
        request: &GetActionResultRequest,
    ) -> Result<(), Status> {
        if result.stdout_digest.is_some() {
            result.stdout_raw.clear();
        }
        if result.stderr_digest.is_some() {
            result.stderr_raw.clear();
        }
        for file in &mut result.output_files {
            file.contents.clear();
        }
        let mut budget = self
            .max_inline_bytes
            .min(self.max_message_size.saturating_sub(result.encoded_len()));
        if request.inline_stdout {
            self.inline(&result.stdout_digest, &mut result.stdout_raw, &mut budget)
                .await?;
        }
        if request.inline_stderr {
            self.inline(&result.stderr_digest, &mut result.stderr_raw, &mut budget)
                .await?;
        }
        let wanted: HashSet<&str> = request
            .inline_output_files
            .iter()
            .map(String::as_str)
            .collect();
        for file in &mut result.output_files {
            if wanted.contains(file.path.as_str()) {
                self.inline(&file.digest, &mut file.contents, &mut budget)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the blob `digest` into `out` if it fits in `budget` (skipping it otherwise, which
    /// the REAPI allows).
    async fn inline(
        &self,
        digest: &Option<crate::proto::reapi::Digest>,
        out: &mut Vec<u8>,
        budget: &mut usize,
    ) -> Result<(), Status> {
        let Some(digest) = digest else { return Ok(()) };
        let digest = digests::parse(digest, "inlined digest")?;
        let cost = usize::try_from(digest.size)
            .unwrap_or(usize::MAX)
            .saturating_add(FIELD_OVERHEAD);
        if cost > *budget {
            return Ok(());
        }
        *out = self
            .engine
            .read_blob(&digest, 0, digest.size)
            .await?
            .to_vec();
        *budget -= cost;
        Ok(())
    }
}

/// Every CAS digest `result` refers to directly. Fails on a malformed or missing required one.
fn referenced_digests(result: &ActionResult) -> Result<Vec<Digest>, Status> {
    let mut out = Vec::new();
    for file in &result.output_files {
        out.push(digests::required(
            file.digest.as_ref(),
            "output file digest",
        )?);
    }
    for directory in &result.output_directories {
        out.push(digests::required(
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
            out.push(digests::parse(digest, what)?);
        }
    }
    Ok(out)
}

/// The digests of all files in a `Tree`.
fn tree_file_digests(tree: &Tree) -> Result<Vec<Digest>, Status> {
    tree.root
        .iter()
        .chain(&tree.children)
        .flat_map(|directory| &directory.files)
        .map(|file| digests::required(file.digest.as_ref(), "tree file digest"))
        .collect()
}

/// INVALID_ARGUMENT unless `result` is well formed: every digest parses, required ones exist,
/// every output has a path.
// The deprecated pre-2.1 symlink fields are what Bazel 4 still sends, so they are checked too.
#[allow(deprecated)]
fn validate(result: &ActionResult) -> Result<(), Status> {
    referenced_digests(result)?;
    let paths = result
        .output_files
        .iter()
        .map(|f| &f.path)
        .chain(result.output_directories.iter().map(|d| &d.path))
        .chain(
            result
                .output_symlinks
                .iter()
                .chain(&result.output_file_symlinks)
                .chain(&result.output_directory_symlinks)
                .map(|s| &s.path),
        );
    for path in paths {
        if path.is_empty() {
            return Err(Status::invalid_argument("an output has an empty path"));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        digests::check_function(request.digest_function)?;
        let action = digests::required(request.action_digest.as_ref(), "action_digest")?;
        let instance = &request.instance_name;
        tracing::debug!(%instance, %action, "GetActionResult");
        let Some((AcKind::ActionResult, bytes)) =
            self.engine.get_action(instance, &action.hash).await?
        else {
            // Absent, or an opaque value some HTTP client (ccache) stored under this key.
            return Err(Status::not_found(format!("no action result for {action}")));
        };
        // A value that is not an ActionResult is a miss, not a server error: the client just
        // reruns the action and overwrites it.
        let mut result = ActionResult::decode(bytes).map_err(|e| {
            tracing::warn!(%instance, %action, error = %e, "stored action result does not decode");
            Status::not_found(format!("stored action result for {action} does not decode"))
        })?;
        self.check_outputs_present(&action, &result).await?;
        self.apply_inlining(&mut result, &request).await?;
        Ok(Response::new(result))
    }

    /// Stores the result as given. Referenced blobs need not exist yet: completeness is checked
    /// on every read, which is the check that cannot go stale.
    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        digests::check_function(request.digest_function)?;
        let action = digests::required(request.action_digest.as_ref(), "action_digest")?;
        let instance = &request.instance_name;
        tracing::debug!(%instance, %action, "UpdateActionResult");
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("action_result is missing"))?;
        validate(&result)?;
        self.engine
            .put_action(
                instance,
                action.hash,
                AcKind::ActionResult,
                result.encode_to_vec().into(),
            )
            .await?;
        Ok(Response::new(result))
    }
}
