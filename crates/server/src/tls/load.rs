//! Turning the PEM files into what rustls serves: the chain, a signing key checked against the
//! leaf certificate, and the leaf's notAfter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::validity;

/// Why a certificate and key could not be used. The old pair, if any, stays in service.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: the leaf certificate has no readable notAfter")]
    NoExpiry { path: PathBuf },
    #[error("{key}: not the private key of the first certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The two files' bytes, as last read.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl PemPair {
    pub async fn read(cert: &Path, key: &Path) -> Result<PemPair, TlsError> {
        let read = |path: &Path| {
            let path = path.to_path_buf();
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| TlsError::Read { path, source })
            }
        };
        Ok(PemPair {
            cert: read(cert).await?,
            key: read(key).await?,
        })
    }

    pub fn read_blocking(cert: &Path, key: &Path) -> Result<PemPair, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(PemPair {
            cert: read(cert)?,
            key: read(key)?,
        })
    }
}

/// A certificate ready to serve.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// Certificates in the chain, the leaf included.
    pub chain_len: usize,
}

/// Parses and checks a pair: at least one certificate, a key the provider can sign with, and
/// the key matching the first certificate (a renewal that wrote a new certificate beside the
/// old key is refused here, not at the first handshake).
pub fn parse(
    pair: &PemPair,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let bad = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::BadPem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(&pair.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    };
    let not_after = validity::not_after(leaf).ok_or_else(|| TlsError::NoExpiry {
        path: cert_path.to_path_buf(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&pair.key).map_err(|e| bad(key_path, e))?;
    let chain_len = chain.len();
    let mismatch = |e: rustls::Error| TlsError::KeyMismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(mismatch)?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
        chain_len,
    })
}
