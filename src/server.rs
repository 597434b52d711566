//! `hoard serve`: opens the engine, assembles the store stack over it, and runs the gRPC and
//! HTTP front ends on that one stack until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::{FutureExt, Shared};

use crate::engine::{Engine, EngineConfig};
use crate::observe::{history, Metrics};
use crate::seam::{Fs, Runtime};
use crate::store::stack::{self, StackConfig};
#[cfg(not(madsim))]
use crate::tier::object_store::ObjectStoreBucket;
use crate::tier::{Bucket, Tier};
use crate::wire::grpc::{self, GrpcConfig};
use crate::wire::http::{self, HttpConfig};

/// What `hoard serve` runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Engine settings (data dir, limits).
    pub engine: EngineConfig,
    /// Settings of the store's layers.
    pub stack: StackConfig,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`None` disables HTTP).
    pub http_addr: Option<SocketAddr>,
    /// gRPC settings.
    pub grpc: GrpcConfig,
    /// HTTP settings.
    pub http: HttpConfig,
}

/// Opens the engine (and the bucket of `config.stack.object_store`, if any) and serves both front ends until
/// `shutdown` completes or one fails.
pub async fn serve(
    config: ServeConfig,
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bucket = match &config.stack.object_store {
        #[cfg(not(madsim))]
        Some(tier) => Some(Arc::new(ObjectStoreBucket::from_url(&tier.url)?) as Arc<dyn Bucket>),
        #[cfg(madsim)]
        Some(_) => return Err("the simulator passes its own bucket to serve_with_bucket".into()),
        None => None,
    };
    serve_with_bucket(config, bucket, fs, runtime, shutdown).await
}

/// [`serve`] with the tier's bucket given (the simulator's, or a test's).
pub async fn serve_with_bucket(
    mut config: ServeConfig,
    bucket: Option<Arc<dyn Bucket>>,
    fs: Arc<dyn Fs>,
    runtime: Arc<dyn Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tier_config = config.stack.object_store.clone().zip(bucket);
    config.engine.hold_for_upload |= tier_config.is_some();
    let engine = Engine::open(config.engine.clone(), fs.clone(), runtime.clone()).await?;
    // One registry for both front ends: `GET /metrics` on HTTP shows the gRPC traffic too.
    let mut metrics = Metrics::new();
    let mut stack_config = config.stack.clone();
    if let Some((tier_config, bucket)) = tier_config {
        let tier = Tier::open(tier_config, bucket, engine.clone(), fs, runtime.clone()).await?;
        tier.metrics().register(metrics.registry_mut());
        let shown = tier.clone();
        metrics.set_status_fields(Arc::new(move || shown.status_json()));
        stack_config.tier = Some(tier);
    }
    let metrics = Arc::new(metrics);
    if let Some(tier) = &stack_config.tier {
        tier.publish_to(metrics.clone());
    }
    // One cache for both front ends: every rule of the cache applies to gRPC and HTTP alike.
    let cache = stack::over_engine(engine.clone(), &stack_config);
    let shutdown: Shared<futures::future::BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let stats_source = cache.clone();
    runtime.spawn(Box::pin(history::run_sampler(
        runtime.clone(),
        metrics.clone(),
        move || stats_source.stats(),
        history::SAMPLE_INTERVAL,
        shutdown.clone(),
    )));
    let grpc_config = GrpcConfig {
        metrics: metrics.clone(),
        ..config.grpc.clone()
    };
    let http_config = HttpConfig {
        metrics,
        ..config.http.clone()
    };
    tracing::info!(addr = %config.grpc_addr, "serving gRPC");
    let grpc = grpc::serve(
        cache.clone(),
        grpc_config,
        config.grpc_addr,
        shutdown.clone(),
    );
    match config.http_addr {
        Some(addr) => {
            tracing::info!(%addr, "serving HTTP");
            let http = http::serve(cache, http_config, addr, shutdown);
            futures::try_join!(grpc, http)?;
        }
        None => grpc.await?,
    }
    // Both front ends have stopped: seal the active segment so the next start reads footers only.
    engine.shutdown().await;
    if let Some(tier) = &stack_config.tier {
        tier.stop();
    }
    tracing::info!("shut down");
    Ok(())
}

/// The default data directory: `$XDG_CACHE_HOME/hoard`, `~/.cache/hoard`, or `./hoard-data`.
pub fn default_data_dir() -> PathBuf {
    let from_env = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from_env("XDG_CACHE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
        .map(|cache| cache.join("hoard"))
        .unwrap_or_else(|| PathBuf::from("hoard-data"))
}

/// Parses a byte count: a number with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1048576, 512M, 20G)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size suffix {other:?} in {text:?}")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("3 KiB"), Ok(3 << 10));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
