//! The ActionCache service.
//!
//! The cache's rules live in the store's layers, shared with HTTP: a hit is only served when
//! every blob it references is still in the CAS ([`crate::store::CompletenessChecking`]), and a
//! malformed or path-escaping result is refused ([`crate::store::ActionResultValidation`]).
//! What is gRPC's own is here: only `ActionResult`s are served (a ccache value stored over HTTP
//! is a miss), and inlining of outputs into the reply.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::digests;
use crate::engine::AcKind;
use crate::proto::reapi::{
    action_cache_server::ActionCache, ActionResult, GetActionResultRequest,
    UpdateActionResultRequest,
};
use crate::store::{Accept, ActionKey, ActionValue, DigestFunction, Store};

/// Serves GetActionResult and UpdateActionResult from the store's per-instance action cache.
pub struct ActionCacheService {
    store: Arc<dyn Store>,
    /// Budget of bytes inlined into one GetActionResult reply.
    max_inline_bytes: usize,
    /// The reply, inlined bytes included, must fit in one gRPC message.
    max_message_size: usize,
}

/// Bytes a length-delimited field may add beyond its payload (tag and length varint).
const FIELD_OVERHEAD: usize = 16;

impl ActionCacheService {
    /// A service over `store` that inlines at most `max_inline_bytes` per reply.
    pub fn new(store: Arc<dyn Store>, max_inline_bytes: usize, max_message_size: usize) -> Self {
        ActionCacheService {
            store,
            max_inline_bytes,
            max_message_size,
        }
    }

    /// Inlines what the client asked for, within the byte budget, and strips inline bytes it did
    /// not ask for (the REAPI says servers should not inline unrequested contents). Bytes with no
    /// digest are the only copy and stay.
    async fn apply_inlining(
        &self,
        result: &mut ActionResult,
        request: &GetActionResultRequest,
        function: DigestFunction,
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
            self.inline(
                function,
                &result.stdout_digest,
                &mut result.stdout_raw,
                &mut budget,
            )
            .await?;
        }
        if request.inline_stderr {
            self.inline(
                function,
                &result.stderr_digest,
                &mut result.stderr_raw,
                &mut budget,
            )
            .await?;
        }
        let wanted: HashSet<&str> = request
            .inline_output_files
            .iter()
            .map(String::as_str)
            .collect();
        for file in &mut result.output_files {
            if wanted.contains(file.path.as_str()) {
                self.inline(function, &file.digest, &mut file.contents, &mut budget)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads the blob `digest` into `out` if it fits in `budget` (skipping it otherwise, which
    /// the REAPI allows).
    async fn inline(
        &self,
        function: DigestFunction,
        digest: &Option<crate::proto::reapi::Digest>,
        out: &mut Vec<u8>,
        budget: &mut usize,
    ) -> Result<(), Status> {
        let Some(digest) = digest else { return Ok(()) };
        let digest = digests::parse(function, digest, "inlined digest")?;
        let cost = usize::try_from(digest.size)
            .unwrap_or(usize::MAX)
            .saturating_add(FIELD_OVERHEAD);
        if cost > *budget {
            return Ok(());
        }
        *out = self.store.read_blob(&digest).await?.to_vec();
        *budget -= cost;
        Ok(())
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        let action = digests::required(function, request.action_digest.as_ref(), "action_digest")?;
        let instance = &request.instance_name;
        tracing::debug!(%instance, %action, "GetActionResult");
        let key = ActionKey::with_function(instance.as_str(), function, action.hash);
        let found = self.store.get_action(&key, Accept::ActionResults).await?;
        // Absent, incomplete, or an opaque value some HTTP client (ccache) stored under this key.
        let Some(value) = found else {
            return Err(Status::not_found(format!("no action result for {action}")));
        };
        // The completeness layer decoded it already; a value that does not decode is a miss.
        let mut result = ActionResult::decode(value.bytes).map_err(|e| {
            Status::not_found(format!(
                "stored action result for {action} does not decode: {e}"
            ))
        })?;
        self.apply_inlining(&mut result, &request, function).await?;
        Ok(Response::new(result))
    }

    /// Stores the result as given (the store refuses a malformed one). Referenced blobs need not
    /// exist yet: completeness is checked on every read, which is the check that cannot go stale.
    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        let action = digests::required(function, request.action_digest.as_ref(), "action_digest")?;
        let instance = &request.instance_name;
        tracing::debug!(%instance, %action, "UpdateActionResult");
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("action_result is missing"))?;
        let value = ActionValue {
            kind: AcKind::ActionResult,
            bytes: result.encode_to_vec().into(),
        };
        self.store
            .put_action(
                &ActionKey::with_function(instance.as_str(), function, action.hash),
                value,
            )
            .await?;
        Ok(Response::new(result))
    }
}
