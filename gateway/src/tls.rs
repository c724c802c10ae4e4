//! TLS from the binary itself (`--tls-cert`, `--tls-key`): rustls through tokio-rustls, with
//! the certificate and key read again on SIGHUP.
//!
//! A reload swaps the key that the certificate resolver hands to new handshakes; connections
//! already up keep the session they negotiated, so renewing a certificate drops nobody. A
//! reload that fails (a missing file, a key that does not match) keeps the previous pair and
//! says why in the log.

use crate::config::TlsFiles;
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::{Error as PemError, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no PEM block of the kind wanted.
    #[error("reading {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// The key is not one rustls can sign with, or not the certificate's.
    #[error("the key in {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The listener's TLS: an acceptor for new connections and the files it reloads from.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Current>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// The certificate and key new handshakes get.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

impl Tls {
    /// Reads the certificate chain and key; HTTP/1.1 only (ALPN `http/1.1`).
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        // ring, not rustls's default aws-lc-rs: a fresh machine builds it with its C compiler
        // alone, in seconds, where aws-lc is a large C library. rustls 0.23.48 marks ring's
        // provider deprecated because it offers no post-quantum key exchange (X25519MLKEM768);
        // handshakes use X25519 or the NIST curves instead, as every client supports.
        #[allow(deprecated)]
        let provider = Arc::new(ring::default_provider());
        let key = certified_key(files, &provider)?;
        let resolver = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files: files.clone(),
            provider,
        })
    }

    /// What accepts TLS on a new connection.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; new handshakes get the new pair. On an error the previous one
    /// stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.files, &self.provider)?;
        *self.resolver.0.write() = Arc::new(key);
        Ok(())
    }
}

/// Handles SIGHUP for as long as the runtime runs: reloads `tls` when the node serves TLS, and
/// otherwise only logs it (SIGHUP's default would end the process, and `systemctl reload`
/// sends it).
pub fn reload_on_sighup(tls: Option<Arc<Tls>>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.files.cert.display(),
                    "SIGHUP: TLS certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS certificate not reloaded; the previous one stays"
                ),
            }
        }
    });
    Ok(())
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A PEM reading error in words (rustls's own prints the marker lines as byte arrays).
fn pem_error(path: &Path, what: &str, e: PemError) -> TlsError {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let reason = match e {
        PemError::MissingSectionEnd { end_marker } => {
            format!("a PEM block does not end (no {:?} line)", text(&end_marker))
        }
        PemError::IllegalSectionStart { line } => {
            format!("a PEM block starts badly: {:?}", text(&line))
        }
        PemError::NoItemsFound => format!("no {what} block"),
        PemError::Io(e) => e.to_string(),
        other => other.to_string(),
    };
    file_error(path, reason)
}

/// The chain and key in `files`, checked to belong together.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_error(&files.cert, "CERTIFICATE", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, "CERTIFICATE", e))?;
    if chain.is_empty() {
        return Err(file_error(&files.cert, "no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error(&files.key, "PRIVATE KEY", e))?;
    let key_error = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| key_error(format!("{e} (not the key of the certificate)")))?;
    Ok(certified)
}
