//! TLS for both listeners: rustls (with the `ring` provider) from PEM files.
//!
//! `--tls-cert` (the certificate chain, leaf first) and `--tls-key` (PKCS#8, PKCS#1 or SEC1)
//! turn TLS on for gRPC (Bazel: `grpcs://`) and HTTP (`https://`); `--tls-client-ca` also
//! requires every client to present a certificate signed by one of the CAs in that file (mutual
//! TLS). The files are read and checked once, at startup.
//!
//! The simulator's sockets carry no TLS: [`TlsConfig`] can be built in both worlds (it is only
//! parsing), but the listeners refuse to start with it under madsim.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A certificate, its key and optionally the CAs client certificates must chain to.
#[derive(Clone)]
// Under madsim the listeners never read the files (they refuse TLS).
#[cfg_attr(madsim, allow(dead_code))]
pub struct TlsConfig {
    /// Whether clients must present a certificate.
    mutual: bool,
    /// The HTTP listener's configuration (ALPN `http/1.1`); also proof the files are usable.
    http: Arc<ServerConfig>,
    /// The gRPC listener's configuration (ALPN `h2`).
    grpc: Arc<ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

/// TLS files that cannot be used (the message names the file and the problem).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsConfig {
    /// Reads and checks the PEM files.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsConfig, TlsError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| TlsError(format!("cannot read {what} {}: {e}", path.display())))
        };
        let cert_pem = read("TLS certificate", cert)?;
        let key_pem = read("TLS key", key)?;
        let client_ca_pem = client_ca
            .map(|path| read("TLS client CA", path))
            .transpose()?;
        TlsConfig::from_pem(cert_pem, key_pem, client_ca_pem).map_err(|TlsError(e)| {
            TlsError(format!(
                "TLS files {} / {}: {e}",
                cert.display(),
                key.display()
            ))
        })
    }

    /// Checks PEM-encoded certificate chain, key and optional client CAs.
    pub fn from_pem(
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        client_ca_pem: Option<Vec<u8>>,
    ) -> Result<TlsConfig, TlsError> {
        // tonic's client TLS (tests, tools) uses the process-wide provider: make it ring's. (An
        // error only means one is installed already.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = server_config(&cert_pem, &key_pem, client_ca_pem.as_deref())?;
        let mut grpc = http.clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConfig {
            mutual: client_ca_pem.is_some(),
            http: Arc::new(http),
            grpc: Arc::new(grpc),
        })
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// The acceptor of the HTTP listener.
    #[cfg(not(madsim))]
    pub(crate) fn http_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.http.clone())
    }

    /// The acceptor of the gRPC listener (ALPN `h2`).
    #[cfg(not(madsim))]
    pub(crate) fn grpc_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.grpc.clone())
    }
}

fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<ServerConfig, TlsError> {
    let chain = certificates(cert_pem, "certificate file")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError(format!("no usable private key in the key file: {e}")))?;
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(pem, "client CA file")? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError(format!("bad client CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|e| TlsError(format!("client CA file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit together: {e}")))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("the {what} is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError(format!("the {what} holds no certificate")));
    }
    Ok(chain)
}
