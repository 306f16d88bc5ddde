//! JWT-SVID signing keys of the `dev` upstream: an ECDSA P-256 key (ES256) generated at
//! start and replaced every `jwt_key_rotation`; a replaced key's public half stays in the
//! JWT bundle until every token it signed has expired.
//!
//! The token format and validation live in `enclaveid_workload_api::jwt`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use enclaveid_workload_api::jwt::{self, Alg, JwtIssuer};
use prost::bytes::Bytes;
use serde_json::Value;
use spiffe::{SpiffeId, TrustDomain};
use tokio::time::Instant;

use crate::Error;

/// Extra time a replaced key stays in the bundle past the longest token lifetime, for
/// clock skew between the agent and validators.
const RETIRED_MARGIN: Duration = Duration::from_secs(30);

/// One signing key: private in memory only, public as a JWK.
pub struct JwtKey {
    kid: String,
    pair: EcdsaKeyPair,
    jwk: Value,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("private_key", &"[secret key elided]")
            .finish()
    }
}

impl JwtKey {
    /// A new ES256 key with a random key ID.
    pub fn generate() -> Result<Self, Error> {
        let crypto = |e: aws_lc_rs::error::Unspecified| Error::Crypto(format!("JWT key: {e}"));
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(crypto)?;
        let id: [u8; 16] = rand::random();
        let kid = enclaveid_attestor::hex(&id);
        let jwk = jwt::ec_jwk(&kid, "P-256", pair.public_key().as_ref()).map_err(Error::Crypto)?;
        Ok(Self { kid, pair, jwk })
    }

    /// The public key as a JWK (`use: "jwt-svid"`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}

impl JwtIssuer for JwtKey {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn issue(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, String> {
        let claims = jwt::claims(spiffe_id, audience, ttl, now);
        jwt::encode(Alg::Es256, &self.kid, &claims, |message| {
            self.pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string())
        })
    }
}

/// The current key, the replaced ones still in the bundle, and when to replace.
pub struct JwtKeys {
    trust_domain: String,
    current: Arc<JwtKey>,
    retired: Vec<(Value, SystemTime)>,
    lifetime: Duration,
    longest_token: Duration,
    rotate_at: Instant,
}

impl JwtKeys {
    /// Keys for `trust_domain`, each used for `lifetime`; `longest_token` is the longest
    /// JWT-SVID lifetime of any entry.
    pub fn new(
        trust_domain: &TrustDomain,
        lifetime: Duration,
        longest_token: Duration,
    ) -> Result<Self, Error> {
        Ok(Self {
            trust_domain: trust_domain.id_string(),
            current: Arc::new(JwtKey::generate()?),
            retired: Vec::new(),
            lifetime,
            longest_token,
            rotate_at: Instant::now() + lifetime,
        })
    }

    /// Replaces the signing key now; the old public key stays until its tokens expire.
    pub fn rotate(&mut self) -> Result<(), Error> {
        let next = Arc::new(JwtKey::generate()?);
        let old = std::mem::replace(&mut self.current, next);
        let keep_until = SystemTime::now() + self.longest_token + RETIRED_MARGIN;
        self.retired.push((old.jwk.clone(), keep_until));
        self.rotate_at = Instant::now() + self.lifetime;
        tracing::info!(kid = %self.current.kid, retired_kid = %old.kid, "JWT-SVID signing key replaced");
        Ok(())
    }

    /// Rotates if due and drops retired keys whose tokens have all expired; whether the
    /// bundle changed.
    pub fn update(&mut self, now: Instant, wall: SystemTime) -> bool {
        let before = self.retired.len();
        self.retired.retain(|(_, keep_until)| *keep_until > wall);
        let mut changed = self.retired.len() != before;
        if now >= self.rotate_at {
            match self.rotate() {
                Ok(()) => changed = true,
                Err(error) => {
                    tracing::error!(%error, "could not replace the JWT-SVID signing key; retrying in a minute");
                    self.rotate_at = now + Duration::from_secs(60);
                }
            }
        }
        changed
    }

    /// When [`JwtKeys::update`] has something to do next.
    pub fn next_wakeup(&self, now: Instant, wall: SystemTime) -> Instant {
        self.retired
            .iter()
            .map(|(_, until)| now + until.duration_since(wall).unwrap_or_default())
            .chain(std::iter::once(self.rotate_at))
            .min()
            .unwrap_or(self.rotate_at)
    }

    /// The JWT bundle: the current key, then the retired ones.
    pub fn bundles(&self) -> BTreeMap<String, Bytes> {
        let keys: Vec<Value> = std::iter::once(self.current.jwk.clone())
            .chain(self.retired.iter().map(|(jwk, _)| jwk.clone()))
            .collect();
        BTreeMap::from([(self.trust_domain.clone(), jwt::jwks(&keys))])
    }

    /// The current signer.
    pub fn issuer(&self) -> Arc<dyn JwtIssuer> {
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_key_stays_in_the_bundle_until_its_tokens_have_expired() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut keys =
            JwtKeys::new(&td, Duration::from_secs(3600), Duration::from_secs(60)).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let now = SystemTime::now();
        let old = keys
            .issuer()
            .issue(&id, &["a".into()], Duration::from_secs(60), now)
            .unwrap();
        let validate = |keys: &JwtKeys, token: &str, at: SystemTime| {
            jwt::validate(token, "a", &keys.bundles(), at).map(|v| v.spiffe_id)
        };
        assert_eq!(validate(&keys, &old, now), Ok(id.clone()));

        keys.rotate().unwrap();
        let new = keys
            .issuer()
            .issue(&id, &["a".into()], Duration::from_secs(60), now)
            .unwrap();
        assert_ne!(new.split('.').next(), old.split('.').next(), "another kid");
        assert_eq!(
            validate(&keys, &old, now),
            Ok(id.clone()),
            "old tokens still validate"
        );
        assert_eq!(validate(&keys, &new, now), Ok(id));

        // Nothing to drop yet; past the longest token lifetime (and the margin) the old
        // key leaves the bundle, and a token it signed no longer validates.
        let instant = Instant::now();
        assert!(!keys.update(instant, now + Duration::from_secs(60)));
        assert!(keys.update(instant, now + Duration::from_secs(91)));
        let error = validate(&keys, &old, now).unwrap_err();
        assert!(error.0.contains("is not in the JWT bundle"), "{error}");
        assert!(keys.next_wakeup(instant, now) > instant + Duration::from_secs(3000));
    }
}
