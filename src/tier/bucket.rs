//! The bucket seam: the little the object-store tier needs of an object store, so the same tier
//! runs over `object_store` (S3, GCS, Azure, local files) in production and over a simulated
//! bucket with faults under madsim.
//!
//! Keys are relative to the bucket's prefix (the path of `--object-store s3://bucket/prefix`);
//! the implementation adds it. Every implementation must make a PUT atomic: an object is either
//! absent or complete (S3, GCS and Azure do; a multipart upload shows nothing before
//! [`PartUpload::complete`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;

/// An object's bytes as they arrive.
pub type ObjectStream = BoxStream<'static, Result<Bytes, BucketError>>;

/// An object store bucket (under a prefix).
#[async_trait]
pub trait Bucket: Send + Sync + 'static {
    /// Stores `data` under `key`, replacing what is there, in one request.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError>;

    /// Starts a multipart upload of `key` (for large objects: parts of at least
    /// [`MIN_PART_SIZE`] bytes but the last).
    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError>;

    /// The object under `key` from byte `offset` on, as a stream; `None` if there is none.
    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError>;

    /// The size of the object under `key`, if there is one.
    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError>;

    /// Where the bucket is (for logs and `/status`; no credentials).
    fn describe(&self) -> String;
}

/// A multipart upload in progress; nothing is visible under its key before `complete`.
#[async_trait]
pub trait PartUpload: Send {
    /// Sends the next part.
    async fn put_part(&mut self, data: Bytes) -> Result<(), BucketError>;

    /// Makes the object visible, whole.
    async fn complete(self: Box<Self>) -> Result<(), BucketError>;

    /// Gives the upload up (its parts are discarded).
    async fn abort(self: Box<Self>);
}

/// The smallest part of a multipart upload but the last (S3's rule).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// Why a bucket request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// The credentials are missing, wrong or lack a permission (a retry will not help).
    #[error("the object store refused the credentials or the permission: {0}")]
    Denied(String),
    /// The store could not be reached or answered with a server error (worth a retry).
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// Anything else the store answered.
    #[error("the object store failed: {0}")]
    Failed(String),
}

impl BucketError {
    /// The variant's name as a metric label.
    pub fn kind_name(&self) -> &'static str {
        match self {
            BucketError::Denied(_) => "denied",
            BucketError::Unavailable(_) => "unavailable",
            BucketError::Failed(_) => "failed",
        }
    }
}

/// A bucket in memory: for tests, and the simulated bucket's storage. PUTs are atomic.
#[derive(Default)]
pub struct MemoryBucket {
    objects: Arc<Mutex<Objects>>,
}

/// The objects, and every completed PUT's key in the order they became visible.
#[derive(Default)]
struct Objects {
    map: BTreeMap<String, Bytes>,
    order: Vec<String>,
}

impl MemoryBucket {
    /// An empty bucket.
    pub fn new() -> MemoryBucket {
        MemoryBucket::default()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects
            .lock()
            .expect("objects")
            .map
            .keys()
            .cloned()
            .collect()
    }

    /// The key of every PUT so far, in the order the objects became visible.
    pub fn order(&self) -> Vec<String> {
        self.objects.lock().expect("objects").order.clone()
    }

    /// The object under `key`.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.objects.lock().expect("objects").map.get(key).cloned()
    }

    /// Stores `data` under `key` at once.
    pub fn insert(&self, key: &str, data: Bytes) {
        insert(&self.objects, key.to_owned(), data);
    }
}

fn insert(objects: &Mutex<Objects>, key: String, data: Bytes) {
    let mut objects = objects.lock().expect("objects");
    objects.order.push(key.clone());
    objects.map.insert(key, data);
}

#[async_trait]
impl Bucket for MemoryBucket {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        self.insert(key, data);
        Ok(())
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError> {
        Ok(Box::new(MemoryParts {
            objects: self.objects.clone(),
            key: key.to_owned(),
            parts: BytesMut::new(),
        }))
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError> {
        let Some(data) = self.object(key) else {
            return Ok(None);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let rest = data.slice(start..);
        Ok(Some(Box::pin(futures::stream::iter([Ok(rest)]))))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        Ok(self.object(key).map(|data| data.len() as u64))
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

/// A multipart upload into a [`MemoryBucket`]: the parts are joined and inserted at once.
struct MemoryParts {
    objects: Arc<Mutex<Objects>>,
    key: String,
    parts: BytesMut,
}

#[async_trait]
impl PartUpload for MemoryParts {
    async fn put_part(&mut self, data: Bytes) -> Result<(), BucketError> {
        self.parts.extend_from_slice(&data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), BucketError> {
        insert(&self.objects, self.key, self.parts.freeze());
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

/// The whole object under `key`, if there is one and it is at most `max` bytes.
pub async fn read_all(
    bucket: &dyn Bucket,
    key: &str,
    max: usize,
) -> Result<Option<Bytes>, BucketError> {
    use futures::StreamExt as _;
    let Some(mut stream) = bucket.get(key, 0).await? else {
        return Ok(None);
    };
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
        if out.len() > max {
            return Err(BucketError::Failed(format!(
                "{key} is larger than the {max} bytes expected"
            )));
        }
    }
    Ok(Some(out.freeze()))
}
