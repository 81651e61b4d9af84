//! HTTPS: the rustls server configuration from `server.tls_cert` and `server.tls_key` (PEM),
//! read once at start. The crypto provider is aws-lc-rs, named explicitly (the process-wide
//! default would be ambiguous with more than one provider compiled in).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file is missing, unreadable, or holds no PEM item of the kind needed.
    #[error("{key} {path}: {reason}")]
    File {
        /// `server.tls_cert` or `server.tls_key`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, an unsupported key).
    #[error("server.tls_cert and server.tls_key: {0}")]
    Config(String),
}

/// An acceptor for `cert` (the chain, leaf first) and `key`, speaking HTTP/1.1 (ALPN).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |key: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |reason: String| TlsError::File { key, path, reason }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| e.to_string())
        .and_then(|items| {
            items
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        })
        .map_err(file_error("server.tls_cert", cert))?;
    if chain.is_empty() {
        return Err(file_error("server.tls_cert", cert)(
            "no CERTIFICATE in the file".into(),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("server.tls_key", key)(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn refusal(cert: &Path, key: &Path) -> TlsError {
        acceptor(cert, key).err().expect("refused")
    }

    #[test]
    fn a_pair_loads_and_bad_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        assert!(acceptor(&cert, &key).is_ok());

        let error = refusal(&dir.path().join("missing.crt"), &key);
        assert!(error.to_string().starts_with("server.tls_cert"), "{error}");
        let error = refusal(&key, &key);
        assert!(error.to_string().contains("no CERTIFICATE"), "{error}");
        let error = refusal(&cert, &cert);
        assert!(error.to_string().starts_with("server.tls_key"), "{error}");
        let error = refusal(&cert, &other_key);
        assert!(matches!(error, TlsError::Config(_)), "{error}");
    }
}
