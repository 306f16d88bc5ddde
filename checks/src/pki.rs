//! What the material checks and the peer checks share on top of rustls-webpki: time,
//! trust anchors, and an extended-key-usage policy.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};

/// Accepts any extended key usage. The checks here are about the path and revocation;
/// what a certificate may be used for is the TLS handshake's business (it checks client
/// or server authentication itself), and the material's role is checked separately.
pub(crate) struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        // A malformed EKU extension is still refused.
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// `t` as webpki takes it (before the epoch: the epoch).
pub(crate) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// `t` from webpki.
pub(crate) fn system_time(t: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// RFC 3339, for messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// The trust anchors of `roots`; the index of the first that webpki refuses.
pub(crate) fn anchors<'a>(
    roots: &'a [CertificateDer<'a>],
) -> Result<Vec<TrustAnchor<'a>>, (usize, webpki::Error)> {
    roots
        .iter()
        .enumerate()
        .map(|(i, root)| webpki::anchor_from_trusted_cert(root).map_err(|e| (i, e)))
        .collect()
}
