//! TLS for the API: a certificate chain and key from PEM files, ALPN offering h2 then
//! http/1.1, so HTTP/2 clients get HTTP/2 and the rest get HTTP/1.1 on the same port.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::config::TlsFiles;
use super::HttpError;

/// An acceptor for the configured certificate and key; errors name the file at fault.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, HttpError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| HttpError::TlsConfig {
            path: files.cert.display().to_string(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn open(path: &Path) -> Result<BufReader<File>, HttpError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| HttpError::TlsFile {
            path: path.display().to_string(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HttpError::TlsFile {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(HttpError::TlsConfig {
            path: path.display().to_string(),
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, HttpError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| HttpError::TlsFile {
            path: path.display().to_string(),
            source,
        })?
        .ok_or_else(|| HttpError::TlsConfig {
            path: path.display().to_string(),
            reason: "no PEM private key found".to_owned(),
        })
}
