//! Certificates with rcgen (ring): a self-signed CA and serving certificates it signs; and the
//! few facts read back from a PEM certificate (expiry, names).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::CertError;

/// Certificates start this long before they are issued, so a replica or apiserver whose clock
/// lags a little still accepts them.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn serial() -> SerialNumber {
    // Positive, 16 random bytes.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA valid from now for `validity`.
pub fn new_ca(now: SystemTime, validity: Duration) -> Result<CertKey, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(serial());
    let mut dn = DistinguishedName::new();
    let id: u32 = rand::random();
    // A distinct subject per CA, so old and new are told apart during a rotation.
    dn.push(
        DnType::CommonName,
        format!("civic-operator webhook CA {id:08x}"),
    );
    dn.push(DnType::OrganizationName, "civic-mcp");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + validity);
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by `ca`, valid for
/// `validity` but never past the CA's own expiry.
pub fn serving(
    ca: &CertKey,
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<CertKey, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_not_after = not_after(&ca.cert_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.serial_number = Some(serial());
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset((now + validity).min(ca_not_after));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The PEM certificate blocks in `pem`, each on its own with a final newline (a bundle, split).
pub fn split(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        if CertificateDer::from_pem_slice(block.as_bytes()).is_ok() {
            out.push(format!("{block}\n"));
        }
        rest = &rest[start + len + END.len()..];
    }
    out
}

/// Facts about the first certificate in `pem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_after: SystemTime,
    /// DNS names and IP addresses (as text), in certificate order.
    pub names: Vec<String>,
    pub is_ca: bool,
}

/// Reads expiry, names and CA flag of the first certificate in `pem`.
pub fn info(pem: &str) -> Result<CertInfo, CertError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(CertError::NoCertificate)?
        .map_err(|_| CertError::NoCertificate)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| CertError::NoCertificate)?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(addr) = addr {
                        names.push(addr.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_after,
        names,
        is_ca: cert.is_ca(),
    })
}

/// Expiry of the first certificate in `pem`.
pub fn not_after(pem: &str) -> Result<SystemTime, CertError> {
    Ok(info(pem)?.not_after)
}

/// Whether `names` are exactly the SANs rcgen writes for `wanted` (same set).
pub fn same_names(have: &[String], wanted: &[String]) -> bool {
    let norm = |v: &[String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
        v.sort();
        v.dedup();
        v
    };
    norm(have) == norm(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_a_serving_cert_with_the_names_and_capped_expiry() {
        let now = SystemTime::now();
        let ca = new_ca(now, Duration::from_secs(3600)).unwrap();
        let ca_info = info(&ca.cert_pem).unwrap();
        assert!(ca_info.is_ca);
        let names = vec!["webhook.ns.svc".to_string(), "127.0.0.1".to_string()];
        let leaf = serving(&ca, &names, now, Duration::from_secs(7200)).unwrap();
        let leaf_info = info(&leaf.cert_pem).unwrap();
        assert!(!leaf_info.is_ca);
        assert_eq!(leaf_info.names, names);
        assert!(same_names(&leaf_info.names, &names));
        assert_eq!(
            leaf_info.not_after, ca_info.not_after,
            "capped at the CA's expiry"
        );
        assert!(
            !format!("{leaf:?}").contains("PRIVATE KEY"),
            "Debug hides the key"
        );
    }

    #[test]
    fn a_rustls_client_trusting_the_ca_accepts_the_serving_cert() {
        use rustls::client::WebPkiServerVerifier;
        use rustls::client::danger::ServerCertVerifier;
        let now = SystemTime::now();
        let ca = new_ca(now, Duration::from_secs(3600)).unwrap();
        let other = new_ca(now, Duration::from_secs(3600)).unwrap();
        let leaf = serving(
            &ca,
            &["webhook.ns.svc".into()],
            now,
            Duration::from_secs(600),
        )
        .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verify = |trusted: &CertKey| {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(trusted.cert_pem.as_bytes()).unwrap())
                .unwrap();
            let v = WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                .build()
                .unwrap();
            let end = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
            v.verify_server_cert(
                &end,
                &[],
                &"webhook.ns.svc".try_into().unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .is_ok()
        };
        assert!(verify(&ca));
        assert!(!verify(&other));
    }

    #[test]
    fn bundles_split_into_certificates() {
        let now = SystemTime::now();
        let a = new_ca(now, Duration::from_secs(60)).unwrap();
        let b = new_ca(now, Duration::from_secs(60)).unwrap();
        let parts = split(&format!("{}{}", a.cert_pem, b.cert_pem));
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].trim(), a.cert_pem.trim());
        assert_eq!(parts[1].trim(), b.cert_pem.trim());
        assert!(split("garbage").is_empty());
    }
}
