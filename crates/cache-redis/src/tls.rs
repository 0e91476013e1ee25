//! TLS files (feature `tls`): the CA to trust and the client certificate for mutual TLS, read
//! into redis-rs' [`redis::TlsCertificates`]. Shared with `cache-cluster`.

use std::path::Path;

use cache_core::{Error, ErrorKind, Result};

use crate::errors::ErrorContext;

fn read(path: &Path, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot read {setting} {}: {e}", path.display()),
        )
    })
}

/// The certificates to give redis-rs: `None` when no file is set (the built-in roots, no
/// client certificate). A client certificate needs its key (and the other way round).
pub fn certificates(
    ca_file: Option<&Path>,
    client_cert_file: Option<&Path>,
    client_key_file: Option<&Path>,
) -> Result<Option<redis::TlsCertificates>> {
    let root_cert = ca_file.map(|p| read(p, "tls_ca_file")).transpose()?;
    let client_tls = match (client_cert_file, client_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "tls_client_cert_file")?,
            client_key: read(key, "tls_client_key_file")?,
        }),
        (None, None) => None,
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "tls_client_cert_file and tls_client_key_file go together: set both (mutual \
                 TLS) or neither",
            ))
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// An error of redis-rs taking the TLS files apart (bad PEM, no key in the key file): a
/// configuration error. Its text names the file kind, never the content.
pub fn map_files_error(ctx: &ErrorContext, e: &redis::RedisError) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        format!(
            "the TLS files for {} were refused: {}",
            ctx.endpoint,
            ctx.scrub(&e.to_string())
        ),
    )
}
