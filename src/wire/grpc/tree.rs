//! GetTree: a breadth-first walk of `Directory` messages from a root, in pages.
//!
//! The page token is the number of directories already returned, in the walk's deterministic
//! order (breadth first, children in listed order, each digest once), bound to the root by a
//! hash prefix. Resuming re-walks the skipped part: stateless, so a token stays valid across
//! restarts, at the cost of re-reading directories for late pages. Subdirectories missing from
//! the CAS are skipped (the REAPI returns the part of the tree that is present).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use prost::Message;
use tonic::Status;

use super::digests;
use super::stream::{self, ResponseStream, Sink};
use crate::proto::reapi::{Directory, GetTreeResponse};
use crate::store::{Digest, Error, Store};

/// Directories per page when the client does not ask for fewer.
const MAX_PAGE_SIZE: usize = 10_000;
/// Room left in a reply for the page token and framing.
const PAGE_SLACK: usize = 1024;
/// Bytes a directory adds to a page beyond its encoding (tag and length).
const ENTRY_OVERHEAD: usize = 16;

/// One GetTree call's walk.
pub struct Walk {
    root: Digest,
    page_size: usize,
    /// Directories to skip: those returned by earlier pages.
    skip: u64,
    page_bytes: usize,
}

impl Walk {
    /// Plans a walk from `root`, resuming at `page_token` if it is not empty.
    pub fn new(
        root: Digest,
        page_size: i32,
        page_token: &str,
        max_message_size: usize,
    ) -> Result<Walk, Status> {
        let page_size = match usize::try_from(page_size) {
            Ok(0) => MAX_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "page_size {page_size} is negative"
                )))
            }
        };
        let skip = if page_token.is_empty() {
            0
        } else {
            parse_token(&root, page_token)?
        };
        Ok(Walk {
            root,
            page_size,
            skip,
            page_bytes: max_message_size.saturating_sub(PAGE_SLACK),
        })
    }

    /// Runs the walk as a task feeding the returned stream.
    pub fn spawn(self, store: Arc<dyn Store>) -> ResponseStream<GetTreeResponse> {
        stream::spawn(2, move |sink| async move {
            self.run(store.as_ref(), sink).await
        })
    }

    async fn run(self, store: &dyn Store, sink: Sink<GetTreeResponse>) -> Result<(), Status> {
        let mut queue = VecDeque::from([self.root]);
        let mut seen = HashSet::from([self.root]);
        let mut position = 0u64;
        let mut page = Vec::new();
        let mut page_bytes = 0;
        while let Some(digest) = queue.pop_front() {
            let Some(directory) = self.load(store, &digest).await? else {
                continue;
            };
            let children = directory.directories.iter().filter_map(|node| {
                node.digest
                    .as_ref()
                    .and_then(|d| digests::parse(self.root.function, d, "subdirectory").ok())
            });
            for child in children {
                if seen.insert(child) {
                    queue.push_back(child);
                }
            }
            position += 1;
            if position <= self.skip {
                continue;
            }
            let size = directory.encoded_len() + ENTRY_OVERHEAD;
            if size > self.page_bytes {
                return Err(Status::resource_exhausted(format!(
                    "directory {digest} is larger than a reply may be"
                )));
            }
            // Only now that another directory exists does the full page get a next token.
            if page.len() >= self.page_size || page_bytes + size > self.page_bytes {
                let next_page_token = token(&self.root, position - 1);
                sink.send(GetTreeResponse {
                    directories: std::mem::take(&mut page),
                    next_page_token,
                })
                .await?;
                page_bytes = 0;
            }
            page.push(directory);
            page_bytes += size;
        }
        sink.send(GetTreeResponse {
            directories: page,
            next_page_token: String::new(),
        })
        .await
    }

    /// The directory `digest`, or `None` for a subdirectory that is missing or not a Directory.
    async fn load(&self, store: &dyn Store, digest: &Digest) -> Result<Option<Directory>, Status> {
        let is_root = *digest == self.root;
        let bytes = match store.read_blob(digest).await {
            Ok(bytes) => bytes,
            Err(Error::NotFound(_) | Error::DataLoss(_)) if !is_root => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match Directory::decode(bytes) {
            Ok(directory) => Ok(Some(directory)),
            Err(e) if is_root => Err(Status::invalid_argument(format!(
                "root {digest} is not a Directory: {e}"
            ))),
            Err(e) => {
                tracing::debug!(%digest, error = %e, "GetTree: skipping a subdirectory that does not decode");
                Ok(None)
            }
        }
    }
}

fn token(root: &Digest, position: u64) -> String {
    format!("{}-{position}", &root.hex()[..16])
}

fn parse_token(root: &Digest, page_token: &str) -> Result<u64, Status> {
    page_token
        .split_once('-')
        .filter(|(prefix, _)| *prefix == &root.hex()[..16])
        .and_then(|(_, position)| position.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "page_token {page_token:?} was not issued for a GetTree of {root}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bind_to_the_root() {
        let root = Digest::of(b"root");
        assert_eq!(parse_token(&root, &token(&root, 42)).unwrap(), 42);
        assert!(parse_token(&Digest::of(b"other"), &token(&root, 42)).is_err());
        assert!(parse_token(&root, "garbage").is_err());
        assert!(parse_token(&root, &format!("{}-x", &root.hex()[..16])).is_err());
    }

    #[test]
    fn page_size_is_bounded() {
        let root = Digest::of(b"root");
        assert_eq!(
            Walk::new(root, 0, "", 1 << 20).unwrap().page_size,
            MAX_PAGE_SIZE
        );
        assert_eq!(Walk::new(root, 5, "", 1 << 20).unwrap().page_size, 5);
        assert!(Walk::new(root, -1, "", 1 << 20).is_err());
    }
}
