//! [`Bucket`] over the `object_store` crate: S3 (and MinIO, Ceph RGW, R2), GCS, Azure and local
//! files, with endpoint, region and credentials from the providers' usual environment variables.
//! It runs on the real tokio and reqwest, so it exists only outside the simulator.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, MultipartUpload, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig,
};

use super::bucket::{Bucket, BucketError, ObjectStream, PartUpload};

/// A bucket reached through `object_store`.
pub struct ObjectStoreBucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

/// How long one request may take, and how long connecting may.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl ObjectStoreBucket {
    /// The bucket a URL names: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` (also `abfs://`, `azure://`), `file:///path`, or `memory://`.
    /// Settings come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`); nothing is sent yet.
    pub fn from_url(url: &str) -> Result<ObjectStoreBucket, BucketError> {
        // The TLS stack (reqwest on rustls) takes the process's crypto provider: ring, as the
        // listeners use. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad = |why: String| BucketError::Failed(format!("--object-store {url:?}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
        // Timeouts are set on top of what the environment says (`with_client_options` would
        // replace the environment's client settings, AWS_ALLOW_HTTP among them).
        let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
        let connect_timeout = format!("{}s", CONNECT_TIMEOUT.as_secs());
        // A few quick retries inside one request; the uploader retries on its own after that,
        // and a client waiting on a fill should not wait for minutes.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        };
        // The three cloud builders take the same settings the same way.
        macro_rules! cloud {
            ($builder:ty, $key:ident) => {
                <$builder>::from_env()
                    .with_url(url)
                    .with_config($key::Client(ClientConfigKey::Timeout), &timeout)
                    .with_config(
                        $key::Client(ClientConfigKey::ConnectTimeout),
                        &connect_timeout,
                    )
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            };
        }
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
        use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
        let built: object_store::Result<Arc<dyn ObjectStore>> = match parsed.scheme() {
            "s3" | "s3a" => cloud!(AmazonS3Builder, AmazonS3ConfigKey),
            "gs" => cloud!(GoogleCloudStorageBuilder, GoogleConfigKey),
            "az" | "abfs" | "abfss" | "azure" | "adl" => {
                cloud!(MicrosoftAzureBuilder, AzureConfigKey)
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not a local path".to_owned()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
                return object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map(|store| ObjectStoreBucket {
                        store: Arc::new(store),
                        prefix: Path::default(),
                        url: url.to_owned(),
                    })
                    .map_err(|e| bad(e.to_string()));
            }
            "memory" => Ok(Arc::new(object_store::memory::InMemory::new()) as Arc<dyn ObjectStore>),
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?} (s3://, gs://, az://, file:// or memory://)"
                )))
            }
        };
        let store = built.map_err(|e| bad(e.to_string()))?;
        Ok(ObjectStoreBucket {
            store,
            prefix,
            url: url.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Path {
        key.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }
}

/// What a failed request means for the tier.
fn classify(error: object_store::Error) -> BucketError {
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            BucketError::Denied(error.to_string())
        }
        E::Generic { .. } => {
            let text = error.to_string();
            // S3 and its kin answer wrong keys and missing permissions with 403 and a code. The
            // status is matched with its reason, never as bare digits: the text also holds the
            // URL, whose port may contain them (port 40301 once made a refused connection read
            // as refused credentials).
            let denied = [
                "403 Forbidden",
                "401 Unauthorized",
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            ];
            if denied.iter().any(|needle| text.contains(needle)) {
                BucketError::Denied(text)
            } else {
                BucketError::Unavailable(text)
            }
        }
        other => BucketError::Failed(other.to_string()),
    }
}

#[async_trait]
impl Bucket for ObjectStoreBucket {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BucketError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(data))
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn PartUpload>, BucketError> {
        let upload = self
            .store
            .put_multipart(&self.path(key))
            .await
            .map_err(classify)?;
        Ok(Box::new(Parts { upload }))
    }

    async fn get(&self, key: &str, offset: u64) -> Result<Option<ObjectStream>, BucketError> {
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.path(key), options).await {
            Ok(result) => Ok(Some(result.into_stream().map_err(classify).boxed())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, BucketError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

struct Parts {
    upload: Box<dyn MultipartUpload>,
}

#[async_trait]
impl PartUpload for Parts {
    async fn put_part(&mut self, data: Bytes) -> Result<(), BucketError> {
        self.upload
            .put_part(PutPayload::from_bytes(data))
            .await
            .map_err(classify)
    }

    async fn complete(mut self: Box<Self>) -> Result<(), BucketError> {
        self.upload.complete().await.map(drop).map_err(classify)
    }

    async fn abort(mut self: Box<Self>) {
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(error = %e, "aborting a multipart upload failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        }
    }

    #[test]
    fn a_refused_connection_is_unavailable_whatever_digits_its_url_holds() {
        let refused = "Error performing HEAD http://127.0.0.1:40301/cache/hoard-format in 374ms, \
                       after 3 retries - HTTP error: error sending request";
        assert!(matches!(
            classify(generic(refused)),
            BucketError::Unavailable(_)
        ));
        let forbidden = "Error performing HEAD http://127.0.0.1:9000/cache/hoard-format - Client \
                         error with status 403 Forbidden: SignatureDoesNotMatch";
        assert!(matches!(
            classify(generic(forbidden)),
            BucketError::Denied(_)
        ));
    }
}
