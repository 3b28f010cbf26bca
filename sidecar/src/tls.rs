//! The one rustls client configuration (ring provider) shared by the data path and the token
//! exchange client, built once at start.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra CA bundle is not PEM or holds no certificate.
    #[error("CA bundle: {0}")]
    InvalidPem(String),
    /// A certificate in the extra CA bundle was rejected as a trust anchor.
    #[error("CA bundle: certificate rejected: {0}")]
    BadCertificate(rustls::Error),
    /// rustls refused the protocol configuration (should not happen with ring's defaults).
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

impl TlsError {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            TlsError::InvalidPem(_) | TlsError::BadCertificate(_) => "invalid_ca_bundle",
            TlsError::Config(_) => "tls_config",
        }
    }
}

/// Builds a client configuration trusting the webpki (Mozilla) roots plus the certificates in
/// `extra_roots_pem`, if any. The ring provider is named explicitly, so no process-wide default
/// provider is needed. ALPN is left empty (HTTP/1.1).
pub fn client_config(extra_roots_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_roots_pem {
        for cert in parse_pem_certs(pem)? {
            roots.add(cert).map_err(TlsError::BadCertificate)?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Parses every `CERTIFICATE` block of a PEM bundle; at least one is required.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::InvalidPem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_with_webpki_roots_only() {
        let config = client_config(None).unwrap();
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn rejects_pem_without_certificates() {
        let err = client_config(Some(b"not a pem")).unwrap_err();
        assert_eq!(err.category(), "invalid_ca_bundle");
        let err = parse_pem_certs(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert!(err.is_err());
    }

    #[test]
    fn accepts_a_generated_ca() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["test-ca".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        assert_eq!(parse_pem_certs(pem.as_bytes()).unwrap().len(), 1);
        client_config(Some(pem.as_bytes())).unwrap();
    }
}
