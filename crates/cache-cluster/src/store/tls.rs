//! The TLS files of a config (CA, client certificate and key), read once at connect.

use cache_core::{Error, ErrorKind, Result};

use crate::config::{ClusterConfig, Seeds};

/// The TLS files' contents (read once, TLS only).
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsFiles {
    /// PEM of the CA to trust.
    pub(crate) root: Option<Vec<u8>>,
    /// PEM of the client certificate and of its key (mutual TLS).
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// The certificates for redis-rs, when any file is set.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root.clone(),
        })
    }
}

/// The TLS files' contents, read once (TLS only).
pub(super) fn read_tls_files(config: &ClusterConfig, seeds: &Seeds) -> Result<TlsFiles> {
    if !seeds.tls {
        return Ok(TlsFiles::default());
    }
    #[cfg(feature = "tls")]
    {
        // rustls needs a process-wide crypto provider; ours is `ring`. No-op when one is
        // installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let read = |path: &std::path::Path, setting: &str| {
        std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot read {setting} {}: {e}", path.display()),
            )
        })
    };
    let root = match &config.tls_ca_file {
        Some(path) => Some(read(path, "tls_ca_file")?),
        None => None,
    };
    let client = match (&config.tls_client_cert_file, &config.tls_client_key_file) {
        (Some(cert), Some(key)) => Some((
            read(cert, "tls_client_cert_file")?,
            read(key, "tls_client_key_file")?,
        )),
        _ => None,
    };
    Ok(TlsFiles { root, client })
}
