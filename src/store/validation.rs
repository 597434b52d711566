//! [`ActionResultValidation`]: no malformed action result is ever stored.
//!
//! Invariant: every `ActionResult` in the action cache decodes, names only well-formed digests,
//! and has output paths that are relative and normalized (so a client that hits it never writes
//! outside its output tree). Symlink *targets* are not checked: the REAPI allows absolute ones.
//! Opaque values (ccache's) are bytes the cache does not interpret, so they pass untouched.
//! Both front ends store through here, so gRPC's UpdateActionResult and HTTP's `PUT /ac/`
//! refuse the same values with the same [`Error::InvalidArgument`].

use prost::Message as _;

use super::action_result::{check_output_path, output_paths, referenced_digests};
use super::{
    forward_to, AcKind, ActionKey, ActionValue, DigestFunction, Error, Store, StoreFuture,
};
use crate::proto::reapi::ActionResult;

/// Refuses malformed action results on the way in.
pub struct ActionResultValidation<S> {
    inner: S,
}

impl<S> ActionResultValidation<S> {
    /// Validates what is put into `inner`.
    pub fn new(inner: S) -> Self {
        ActionResultValidation { inner }
    }
}

/// `Ok` when `bytes` is an `ActionResult` the cache may store.
pub fn check_action_result(bytes: &[u8]) -> Result<(), Error> {
    let result = ActionResult::decode(bytes)
        .map_err(|e| Error::InvalidArgument(format!("the ActionResult does not decode: {e}")))?;
    // Only the form is checked here, which is the same for every digest function.
    referenced_digests(DigestFunction::Sha256, &result)?;
    for path in output_paths(&result) {
        check_output_path(path)?;
    }
    Ok(())
}

impl<S: Store> Store for ActionResultValidation<S> {
    forward_to!(inner: limits, stats, find_missing_and_touch, resolve_hash_and_touch, open_blob,
        begin_upload, get_action, read_blob);

    fn put_action<'a>(&'a self, key: &'a ActionKey, value: ActionValue) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if value.kind == AcKind::ActionResult {
                check_action_result(&value.bytes)?;
            }
            self.inner.put_action(key, value).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Digest;
    use crate::proto::reapi::{OutputDirectory, OutputFile, OutputSymlink};
    use crate::store::{Accept, MemoryStore};
    use bytes::Bytes;

    fn result_with_file(path: &str) -> ActionResult {
        ActionResult {
            output_files: vec![OutputFile {
                path: path.into(),
                digest: Some((&Digest::of(b"x")).into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn value(result: &ActionResult) -> ActionValue {
        ActionValue {
            kind: AcKind::ActionResult,
            bytes: result.encode_to_vec().into(),
        }
    }

    #[test]
    fn poisoned_paths_are_refused_and_nothing_is_stored() {
        futures::executor::block_on(async {
            let store = ActionResultValidation::new(MemoryStore::new(1 << 20, 1 << 20));
            let key = ActionKey::new("", Digest::of(b"action").hash);
            let directory = ActionResult {
                output_directories: vec![OutputDirectory {
                    path: "/etc".into(),
                    tree_digest: Some((&Digest::of(b"t")).into()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let symlink = ActionResult {
                output_symlinks: vec![OutputSymlink {
                    path: "a/../../b".into(),
                    target: "/usr/bin/ok-target".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            for bad in [result_with_file("../../x"), directory, symlink] {
                let refused = store.put_action(&key, value(&bad)).await;
                assert!(matches!(refused, Err(Error::InvalidArgument(_))), "{bad:?}");
                assert_eq!(store.get_action(&key, Accept::Any).await.unwrap(), None);
            }
        });
    }

    #[test]
    fn good_results_absolute_symlink_targets_and_opaque_values_pass() {
        futures::executor::block_on(async {
            let store = ActionResultValidation::new(MemoryStore::new(1 << 20, 1 << 20));
            let key = ActionKey::new("", Digest::of(b"action").hash);
            let mut good = result_with_file("bazel-out/bin/x");
            good.output_symlinks.push(OutputSymlink {
                path: "bazel-out/bin/link".into(),
                target: "/usr/bin/absolute".into(),
                ..Default::default()
            });
            store.put_action(&key, value(&good)).await.unwrap();
            let opaque = ActionValue {
                kind: AcKind::Opaque,
                bytes: Bytes::from_static(b"cc\xac not protobuf ../../"),
            };
            store.put_action(&key, opaque.clone()).await.unwrap();
            assert_eq!(
                store.get_action(&key, Accept::Any).await.unwrap(),
                Some(opaque)
            );
        });
    }

    #[test]
    fn malformed_digests_are_refused() {
        let mut result = result_with_file("x");
        result.output_files[0].digest.as_mut().unwrap().hash = "XYZ".into();
        assert!(check_action_result(&result.encode_to_vec()).is_err());
        result.output_files[0].digest = None;
        assert!(check_action_result(&result.encode_to_vec()).is_err());
        assert!(check_action_result(b"\xff\xff\xff").is_err());
    }
}
