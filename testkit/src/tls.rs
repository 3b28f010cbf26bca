//! A throwaway CA and a loopback server certificate, for HTTPS fakes and `CIVIC_CA_FILE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::fs::TempDir;

/// A CA (its PEM written to a file) and a server config whose certificate it signed, valid for
/// `localhost`, `127.0.0.1` and `::1`.
pub struct TestCa {
    _dir: TempDir,
    ca_file: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

pub(crate) fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "civic-testkit CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut srv_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        srv_params
            .distinguished_name
            .push(DnType::CommonName, "civic-testkit server");
        let srv_key = KeyPair::generate()?;
        let srv_cert = srv_params.signed_by(&srv_key, &ca)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![srv_cert.der().clone(), ca.der().clone()], key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let dir = TempDir::new("ca");
        let ca_pem = ca.pem();
        let ca_file = dir.write("ca.pem", &ca_pem);
        Ok(Self {
            _dir: dir,
            ca_file,
            ca_pem,
            ca_der: ca.der().clone(),
            server: Arc::new(server),
        })
    }

    /// Path of the CA certificate in PEM form (for `CIVIC_CA_FILE`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Server config presenting the loopback certificate (ALPN h2 and http/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The same server config offering ALPN `http/1.1` only: an HTTP/1.1-only server.
    pub fn server_config_http1_only(&self) -> Arc<rustls::ServerConfig> {
        let mut config = (*self.server).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Client config trusting only this CA.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(ring_provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}
