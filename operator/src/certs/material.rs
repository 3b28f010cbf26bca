//! What the webhook TLS Secret holds, and the pure rotation plan over it.
//!
//! Keys of the Secret:
//! - `ca.crt`: every CA the webhook configuration must trust (its `caBundle`);
//! - `signer.crt`, `signer.key`: the CA that signs serving certificates now;
//! - `next.crt`, `next.key`, `next.staged`: a new CA already in `ca.crt` but not yet signing,
//!   and when it was added (Unix seconds);
//! - `tls.crt`, `tls.key`: the serving certificate.
//!
//! Rotation keeps every serving certificate trusted:
//! 1. the serving certificate is reissued by the signer when a third of its lifetime is left
//!    (or the service names changed);
//! 2. when a third of the signer's lifetime is left, a new CA is generated and added to `ca.crt`
//!    ("staged") while the old one keeps signing;
//! 3. once the staged CA has been in `ca.crt` for the propagation delay and the webhook
//!    configuration's `caBundle` contains it, it becomes the signer and the serving certificate
//!    is reissued by it; the old CA stays in `ca.crt` until it expires.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;

use super::CertError;
use super::issue::{self, CertKey};

pub const CA_BUNDLE_KEY: &str = "ca.crt";
pub const SIGNER_CERT_KEY: &str = "signer.crt";
pub const SIGNER_KEY_KEY: &str = "signer.key";
pub const NEXT_CERT_KEY: &str = "next.crt";
pub const NEXT_KEY_KEY: &str = "next.key";
pub const NEXT_STAGED_KEY: &str = "next.staged";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// The contents of the webhook TLS Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// PEM certificates the webhook configuration trusts, signer first.
    pub bundle: Vec<String>,
    pub signer: CertKey,
    pub next: Option<Staged>,
    pub serving: CertKey,
}

/// A CA added to the bundle but not signing yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub ca: CertKey,
    pub since: SystemTime,
}

impl Material {
    /// `ca.crt` as one PEM text.
    pub fn bundle_pem(&self) -> String {
        self.bundle.concat()
    }

    /// Reads the Secret's data; `None` when anything needed is missing or unreadable (the
    /// material is then made anew).
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        let pair = |c: &str, k: &str| -> Option<CertKey> {
            let cert_pem = text(c)?;
            issue::info(&cert_pem).ok()?;
            Some(CertKey {
                cert_pem,
                key_pem: text(k)?,
            })
        };
        let bundle = issue::split(&text(CA_BUNDLE_KEY)?);
        let signer = pair(SIGNER_CERT_KEY, SIGNER_KEY_KEY)?;
        let serving = pair(TLS_CERT_KEY, TLS_KEY_KEY)?;
        let next = match (pair(NEXT_CERT_KEY, NEXT_KEY_KEY), text(NEXT_STAGED_KEY)) {
            (Some(ca), Some(since)) => Some(Staged {
                ca,
                since: UNIX_EPOCH + Duration::from_secs(since.trim().parse().ok()?),
            }),
            _ => None,
        };
        let material = Self {
            bundle,
            signer,
            next,
            serving,
        };
        material.consistent().then_some(material)
    }

    /// The bundle holds the signer and the staged CA.
    fn consistent(&self) -> bool {
        let holds = |c: &CertKey| self.bundle.iter().any(|b| b.trim() == c.cert_pem.trim());
        holds(&self.signer) && self.next.as_ref().is_none_or(|n| holds(&n.ca))
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let b = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut data = BTreeMap::from([
            (CA_BUNDLE_KEY.to_owned(), b(&self.bundle_pem())),
            (SIGNER_CERT_KEY.to_owned(), b(&self.signer.cert_pem)),
            (SIGNER_KEY_KEY.to_owned(), b(&self.signer.key_pem)),
            (TLS_CERT_KEY.to_owned(), b(&self.serving.cert_pem)),
            (TLS_KEY_KEY.to_owned(), b(&self.serving.key_pem)),
        ]);
        if let Some(next) = &self.next {
            let since = next
                .since
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            data.insert(NEXT_CERT_KEY.to_owned(), b(&next.ca.cert_pem));
            data.insert(NEXT_KEY_KEY.to_owned(), b(&next.ca.key_pem));
            data.insert(NEXT_STAGED_KEY.to_owned(), b(&since.to_string()));
        }
        data
    }
}

/// Lifetimes and names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// DNS names and IP addresses of the serving certificate.
    pub names: Vec<String>,
    /// How long a staged CA sits in the bundle before it signs.
    pub propagation: Duration,
}

/// What the plan decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Keep,
    /// Write this material; the reason is for the log.
    Write(Material, &'static str),
}

fn remaining(not_after: SystemTime, now: SystemTime) -> Duration {
    not_after.duration_since(now).unwrap_or_default()
}

/// The next step for `current` at `now`. `trusted(pem)` says whether the webhook
/// configuration's `caBundle` already holds a CA (true when there is no configuration).
pub fn plan(
    current: Option<&Material>,
    now: SystemTime,
    policy: &Policy,
    trusted: impl Fn(&str) -> bool,
) -> Result<Step, CertError> {
    let Some(current) = current else {
        let signer = issue::new_ca(now, policy.ca_validity)?;
        let serving = issue::serving(&signer, &policy.names, now, policy.cert_validity)?;
        return Ok(Step::Write(
            Material {
                bundle: vec![signer.cert_pem.clone()],
                signer,
                next: None,
                serving,
            },
            "created",
        ));
    };
    let mut m = current.clone();
    let mut reason = None;
    let signer_expiry = issue::not_after(&m.signer.cert_pem)?;

    // Stage a new CA when a third of the signer's life is left.
    if m.next.is_none() && remaining(signer_expiry, now) < policy.ca_validity / 3 {
        let ca = issue::new_ca(now, policy.ca_validity)?;
        m.bundle.push(ca.cert_pem.clone());
        m.next = Some(Staged { ca, since: now });
        reason = Some("staged a new CA");
    }

    // Promote it once the webhook configuration trusts it (at once if the signer expired).
    let promote = m.next.as_ref().is_some_and(|n| {
        let settled = now.duration_since(n.since).unwrap_or_default() >= policy.propagation;
        (settled && trusted(&n.ca.cert_pem)) || signer_expiry <= now
    });
    if promote && let Some(next) = m.next.take() {
        m.signer = next.ca;
        // Signer first, then the others.
        m.bundle.retain(|b| b.trim() != m.signer.cert_pem.trim());
        m.bundle.insert(0, m.signer.cert_pem.clone());
        m.serving = issue::serving(&m.signer, &policy.names, now, policy.cert_validity)?;
        reason = Some("rotated the CA");
    }

    // Reissue the serving certificate when a third of its life is left (if that extends it) or
    // the names changed.
    let serving = issue::info(&m.serving.cert_pem)?;
    let signer_expiry = issue::not_after(&m.signer.cert_pem)?;
    let aging = remaining(serving.not_after, now) < policy.cert_validity / 3
        && signer_expiry > serving.not_after;
    if aging || !issue::same_names(&serving.names, &policy.names) {
        m.serving = issue::serving(&m.signer, &policy.names, now, policy.cert_validity)?;
        reason = reason.or(Some("renewed the serving certificate"));
    }

    // Expired CAs leave the bundle (never the signer or the staged one).
    let keep = |b: &String| {
        b.trim() == m.signer.cert_pem.trim()
            || m.next
                .as_ref()
                .is_some_and(|n| b.trim() == n.ca.cert_pem.trim())
            || issue::not_after(b).is_ok_and(|t| t > now)
    };
    let before = m.bundle.len();
    m.bundle.retain(keep);
    if m.bundle.len() != before {
        reason = reason.or(Some("dropped an expired CA"));
    }

    Ok(match reason {
        Some(r) if m != *current => Step::Write(m, r),
        _ => Step::Keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> Policy {
        Policy {
            ca_validity: 90 * MIN,
            cert_validity: 30 * MIN,
            names: vec!["webhook.ns.svc".into(), "127.0.0.1".into()],
            propagation: 2 * MIN,
        }
    }

    fn write(step: Step) -> Material {
        match step {
            Step::Write(m, _) => m,
            Step::Keep => panic!("expected a write"),
        }
    }

    #[test]
    fn fresh_material_round_trips_through_secret_data() {
        let t0 = SystemTime::now();
        let m = write(plan(None, t0, &policy(), |_| true).unwrap());
        assert_eq!(m.bundle.len(), 1);
        assert_eq!(Material::from_data(&m.to_data()), Some(m.clone()));
        assert_eq!(
            plan(Some(&m), t0 + MIN, &policy(), |_| true).unwrap(),
            Step::Keep
        );
        // Incomplete data is not material.
        let mut data = m.to_data();
        data.remove(TLS_KEY_KEY);
        assert_eq!(Material::from_data(&data), None);
        assert_eq!(Material::from_data(&BTreeMap::new()), None);
    }

    #[test]
    fn the_serving_certificate_is_renewed_by_the_same_ca() {
        let t0 = SystemTime::now();
        let p = policy();
        let m = write(plan(None, t0, &p, |_| true).unwrap());
        let renewed = write(plan(Some(&m), t0 + 21 * MIN, &p, |_| true).unwrap());
        assert_ne!(renewed.serving, m.serving);
        assert_eq!(renewed.signer, m.signer);
        assert_eq!(renewed.bundle, m.bundle);
    }

    #[test]
    fn changed_names_reissue_the_serving_certificate() {
        let t0 = SystemTime::now();
        let mut p = policy();
        let m = write(plan(None, t0, &p, |_| true).unwrap());
        p.names.push("webhook.ns.svc.cluster.local".into());
        let m2 = write(plan(Some(&m), t0, &p, |_| true).unwrap());
        assert_eq!(issue::info(&m2.serving.cert_pem).unwrap().names.len(), 3);
    }

    #[test]
    fn ca_rotation_trusts_old_and_new_throughout() {
        let t0 = SystemTime::now();
        let p = policy();
        let m0 = write(plan(None, t0, &p, |_| true).unwrap());
        let old = m0.signer.cert_pem.clone();

        // Two thirds through the CA's life: a new CA is staged, the old one still signs.
        let t1 = t0 + 61 * MIN;
        let m1 = write(plan(Some(&m0), t1, &p, |_| false).unwrap());
        let next = m1.next.clone().expect("staged");
        assert_eq!(m1.signer.cert_pem, old);
        assert_eq!(m1.bundle, vec![old.clone(), next.ca.cert_pem.clone()]);

        // Not promoted before the propagation delay, nor while the webhook does not trust it.
        let m1b = match plan(Some(&m1), t1 + MIN, &p, |_| true).unwrap() {
            Step::Keep => m1.clone(),
            Step::Write(m, _) => m,
        };
        assert_eq!(m1b.signer.cert_pem, old);
        let m1c = match plan(Some(&m1b), t1 + 3 * MIN, &p, |_| false).unwrap() {
            Step::Keep => m1b.clone(),
            Step::Write(m, _) => m,
        };
        assert_eq!(m1c.signer.cert_pem, old);

        // Promoted: the new CA signs; both stay trusted.
        let m2 = write(plan(Some(&m1c), t1 + 3 * MIN, &p, |pem| pem == next.ca.cert_pem).unwrap());
        assert_eq!(m2.signer, next.ca);
        assert!(m2.next.is_none());
        assert_eq!(m2.bundle, vec![next.ca.cert_pem.clone(), old.clone()]);
        let serving = issue::info(&m2.serving.cert_pem).unwrap();
        assert!(serving.not_after > t1 + 20 * MIN);

        // After the old CA expired it leaves the bundle.
        let m3 = write(plan(Some(&m2), t0 + 91 * MIN, &p, |_| true).unwrap());
        assert_eq!(m3.bundle, vec![next.ca.cert_pem.clone()]);
    }

    #[test]
    fn an_expired_signer_is_replaced_at_once() {
        let t0 = SystemTime::now();
        let p = policy();
        let m0 = write(plan(None, t0, &p, |_| true).unwrap());
        let m1 = write(plan(Some(&m0), t0 + 100 * MIN, &p, |_| false).unwrap());
        assert_ne!(m1.signer, m0.signer);
        let serving = issue::info(&m1.serving.cert_pem).unwrap();
        assert!(serving.not_after > t0 + 100 * MIN);
    }
}
