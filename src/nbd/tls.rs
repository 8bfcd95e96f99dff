//! TLS for NBD connections (`NBD_OPT_STARTTLS`), with X.509 credentials in the layout of
//! QEMU's `tls-creds-x509` objects: one directory holding `server-cert.pem` (the server's
//! certificate, possibly followed by its chain), `server-key.pem` (its private key) and
//! `ca-cert.pem` (the authority clients check it against; the server does not need it).
//!
//! rustls (with the ring provider) does the TLS: a well-reviewed, memory-safe TLS 1.2/1.3
//! implementation, instead of TLS written here. Clients are not asked for certificates.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The server's TLS settings, shared by every connection.
pub type TlsConfig = Arc<ServerConfig>;

/// Load the server certificate and key from the credentials directory `dir`.
pub fn load_server_config(dir: &Path) -> Result<TlsConfig> {
    let cert_path = dir.join("server-cert.pem");
    let key_path = dir.join("server-key.pem");
    let bad = |path: &Path, e: &dyn std::fmt::Display| {
        Error::invalid(format!("TLS credentials: {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| bad(&cert_path, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert_path, &e))?;
    if certs.is_empty() {
        return Err(bad(&cert_path, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| bad(&key_path, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(dir, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&cert_path, &e))?;
    Ok(Arc::new(config))
}

/// One stream shared by a connection's reading and writing halves (a TLS session cannot
/// be split in two). The connection's one thread uses one half at a time, so the lock is
/// never contended.
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Shared<T> {
    /// Share `inner`.
    pub fn new(inner: T) -> Shared<T> {
        Shared(Arc::new(Mutex::new(inner)))
    }

    /// Run `f` on the stream.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T: Read> Read for Shared<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s| s.read(buf))
    }
}

impl<T: Write> Write for Shared<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|s| s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.with(|s| s.flush())
    }
}
