//! The serving certificate, swappable while the server runs: every TLS handshake asks the
//! resolver, so a new certificate takes effect on the next connection without a restart.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::CertError;
use super::issue::{self, CertKey};

/// The current serving certificate; none until the first [`ServingCert::set`].
#[derive(Default)]
pub struct ServingCert {
    current: RwLock<Option<Current>>,
}

struct Current {
    cert_pem: String,
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl ServingCert {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs `pair` (certificate chain and key, PEM) unless it is already the current one.
    /// Returns whether it changed.
    pub fn set(&self, pair: &CertKey) -> Result<bool, CertError> {
        if self
            .read()
            .as_ref()
            .is_some_and(|c| c.cert_pem == pair.cert_pem)
        {
            return Ok(false);
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| CertError::NoCertificate)?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
            .map_err(|_| CertError::NoPrivateKey)?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::Tls(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| CertError::Tls(e.to_string()))?;
        let not_after = issue::not_after(&pair.cert_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Current {
            cert_pem: pair.cert_pem.clone(),
            key: Arc::new(certified),
            not_after,
        });
        Ok(true)
    }

    pub fn is_loaded(&self) -> bool {
        self.read().is_some()
    }

    /// Expiry of the current certificate, as Unix seconds (0 before the first).
    pub fn not_after_unix(&self) -> i64 {
        self.read().as_ref().map_or(0, |c| {
            c.not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.read().as_ref().map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn set_swaps_only_on_change_and_rejects_mismatched_keys() {
        let now = SystemTime::now();
        let ca = issue::new_ca(now, Duration::from_secs(600)).unwrap();
        let a = issue::serving(&ca, &["a.svc".into()], now, Duration::from_secs(60)).unwrap();
        let b = issue::serving(&ca, &["a.svc".into()], now, Duration::from_secs(120)).unwrap();
        let s = ServingCert::default();
        assert!(!s.is_loaded());
        assert_eq!(s.not_after_unix(), 0);
        assert!(s.set(&a).unwrap());
        assert!(!s.set(&a).unwrap());
        let first = s.read().as_ref().unwrap().key.clone();
        assert!(s.set(&b).unwrap());
        assert!(!Arc::ptr_eq(&first, &s.read().as_ref().unwrap().key));
        assert!(s.not_after_unix() > 0);
        let mismatched = CertKey {
            cert_pem: a.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
        };
        assert!(s.set(&mismatched).is_err());
        assert!(format!("{s:?}").contains("loaded: true"));
    }
}
