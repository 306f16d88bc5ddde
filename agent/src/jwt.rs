//! JWT-SVID signing keys.
//!
//! - `dev` upstream: an ECDSA P-256 key (ES256) generated at start and replaced every
//!   `jwt_key_rotation`.
//! - `kms` upstream: the key released by KMS with its Private CA certificate (checked to
//!   chain to the image's root before it is used), the same in every enclave of the trust
//!   domain; its key ID is derived from the public key, so every enclave names it alike.
//!
//! A replaced key's public half stays in the JWT bundle until every token it signed has
//! expired; a revoked key leaves at once.
//!
//! The token format and validation live in `enclaveid_workload_api::jwt`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    RsaKeyPair,
};
use enclaveid_workload_api::jwt::{self, Alg, JwtIssuer};
use prost::bytes::Bytes;
use serde_json::Value;
use spiffe::{SpiffeId, TrustDomain};
use tokio::time::Instant;

use enclaveid_checks::keys::{KeyError, SigningKey};

/// Extra time a replaced key stays in the bundle past the longest token lifetime, for
/// clock skew between the agent and validators.
const RETIRED_MARGIN: Duration = Duration::from_secs(30);

/// Why a JWT-SVID signing key could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// aws-lc could not generate a key.
    #[error("generating a JWT-SVID signing key failed")]
    Generate,
    /// The provisioned key could not be serialized.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The provisioned key is of a type JWT-SVIDs are not signed with here.
    #[error("the JWT signing key is neither ECDSA P-256/P-384 nor RSA")]
    Unsupported,
    /// The public key does not fit a JWK.
    #[error("the JWT signing key's public key does not fit a JWK: {reason}")]
    Jwk {
        /// Why.
        reason: String,
    },
}

/// One signing key: private in memory only, public as a JWK.
pub(crate) struct JwtKey {
    kid: String,
    alg: Alg,
    pair: Pair,
    jwk: Value,
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
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
    pub(crate) fn generate() -> Result<Self, JwtKeyError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| JwtKeyError::Generate)?;
        let id: [u8; 16] = rand::random();
        let kid = enclaveid_attestor::hex(&id);
        let jwk = jwt::ec_jwk(&kid, "P-256", pair.public_key().as_ref())
            .map_err(|reason| JwtKeyError::Jwk { reason })?;
        Ok(Self {
            kid,
            alg: Alg::Es256,
            pair: Pair::Ec(pair),
            jwk,
        })
    }

    /// The provisioned key (already checked against its certificate): ES256 for P-256,
    /// ES384 for P-384, RS256 for RSA. The key ID is the first 16 bytes of the SHA-256 of
    /// the SubjectPublicKeyInfo, in hex.
    pub(crate) fn from_signing_key(key: &SigningKey) -> Result<Self, JwtKeyError> {
        let der = key.to_pkcs8_der()?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.subject_public_key_info());
        let kid = enclaveid_attestor::hex(&digest.as_ref()[..16]);
        let ec = |signing, alg, curve| {
            EcdsaKeyPair::from_pkcs8(signing, &der).ok().map(|pair| {
                let jwk = jwt::ec_jwk(&kid, curve, pair.public_key().as_ref());
                (alg, Pair::Ec(pair), jwk)
            })
        };
        let (alg, pair, jwk) = match ec(&ECDSA_P256_SHA256_FIXED_SIGNING, Alg::Es256, "P-256")
            .or_else(|| ec(&ECDSA_P384_SHA384_FIXED_SIGNING, Alg::Es384, "P-384"))
        {
            Some(found) => found,
            None => {
                let pair = RsaKeyPair::from_pkcs8(&der).map_err(|_| JwtKeyError::Unsupported)?;
                let public =
                    aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = Ok(jwt::rsa_jwk(&kid, &public.n, &public.e));
                (Alg::Rs256, Pair::Rsa(pair), jwk)
            }
        };
        Ok(Self {
            jwk: jwk.map_err(|reason| JwtKeyError::Jwk { reason })?,
            kid,
            alg,
            pair,
        })
    }

    /// The key ID.
    #[cfg(test)]
    fn id(&self) -> &str {
        &self.kid
    }
}

impl JwtIssuer for JwtKey {
    fn kid(&self) -> &str {
        &self.kid
    }

    fn issue<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        audience: &'a [String],
        ttl: Duration,
        now: SystemTime,
    ) -> jwt::Issuing<'a> {
        Box::pin(std::future::ready(self.sign(spiffe_id, audience, ttl, now)))
    }
}

impl JwtKey {
    /// A token signed with this key.
    fn sign(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, String> {
        let claims = jwt::claims(spiffe_id, audience, ttl, now);
        jwt::encode(self.alg, &self.kid, &claims, |message| match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string()),
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|e| e.to_string())?;
                Ok(signature)
            }
        })
    }
}

/// The current key, the replaced ones still in the bundle, and when to replace.
pub(crate) struct JwtKeys {
    trust_domain: String,
    current: Option<Arc<JwtKey>>,
    retired: Vec<(Value, SystemTime)>,
    /// `None`: keys come from outside ([`JwtKeys::set`]), never generated.
    lifetime: Option<Duration>,
    longest_token: Duration,
    rotate_at: Option<Instant>,
}

impl JwtKeys {
    /// Keys for `trust_domain`, each used for `lifetime`; `longest_token` is the longest
    /// JWT-SVID lifetime of any entry.
    pub(crate) fn new(
        trust_domain: &TrustDomain,
        lifetime: Duration,
        longest_token: Duration,
    ) -> Result<Self, JwtKeyError> {
        Ok(Self {
            trust_domain: trust_domain.id_string(),
            current: Some(Arc::new(JwtKey::generate()?)),
            retired: Vec::new(),
            lifetime: Some(lifetime),
            longest_token,
            rotate_at: Some(crate::time::later(Instant::now(), lifetime)),
        })
    }

    /// Keys that come from outside (the `kms` upstream); none until [`JwtKeys::set`].
    pub(crate) fn provisioned(trust_domain: &TrustDomain, longest_token: Duration) -> Self {
        Self {
            trust_domain: trust_domain.id_string(),
            current: None,
            retired: Vec::new(),
            lifetime: None,
            longest_token,
            rotate_at: None,
        }
    }

    /// Replaces the signing key now with a generated one (only for generated keys); the
    /// old public key stays until its tokens expire.
    pub(crate) fn rotate(&mut self, wall: SystemTime) -> Result<(), JwtKeyError> {
        let Some(lifetime) = self.lifetime else {
            return Ok(());
        };
        self.set(JwtKey::generate()?, wall);
        self.rotate_at = Some(crate::time::later(Instant::now(), lifetime));
        Ok(())
    }

    /// Signs with `key` from now on; the previous key, if another, stays in the bundle
    /// until its tokens expire. Whether anything changed.
    pub(crate) fn set(&mut self, key: JwtKey, wall: SystemTime) -> bool {
        if self.current.as_ref().is_some_and(|c| c.kid == key.kid) {
            return false;
        }
        self.retired
            .retain(|(jwk, _)| jwk["kid"] != key.kid.as_str());
        if let Some(old) = self.current.take() {
            let keep_until =
                crate::time::later_wall(wall, self.longest_token.saturating_add(RETIRED_MARGIN));
            self.retired.push((old.jwk.clone(), keep_until));
            tracing::info!(kid = %key.kid, retired_kid = %old.kid, "JWT-SVID signing key replaced");
        } else {
            tracing::info!(kid = %key.kid, "JWT-SVID signing key in use");
        }
        self.current = Some(Arc::new(key));
        true
    }

    /// Stops signing and drops the current key from the bundle at once (it was revoked):
    /// tokens it signed no longer validate.
    pub(crate) fn withdraw(&mut self) {
        if let Some(old) = self.current.take() {
            tracing::error!(kid = %old.kid, "JWT-SVID signing key withdrawn: revoked");
        }
    }

    /// Rotates if due and drops retired keys whose tokens have all expired; whether the
    /// bundle changed.
    pub(crate) fn update(&mut self, now: Instant, wall: SystemTime) -> bool {
        let before = self.retired.len();
        self.retired.retain(|(_, keep_until)| *keep_until > wall);
        let mut changed = self.retired.len() != before;
        if self.rotate_at.is_some_and(|at| now >= at) {
            match self.rotate(wall) {
                Ok(()) => changed = true,
                Err(error) => {
                    tracing::error!(error = %enclaveid_checks::Chain(&error), "could not replace the JWT-SVID signing key; retrying in a minute");
                    self.rotate_at = Some(crate::time::later(now, Duration::from_secs(60)));
                }
            }
        }
        changed
    }

    /// When [`JwtKeys::update`] has something to do next.
    pub(crate) fn next_wakeup(&self, now: Instant, wall: SystemTime) -> Option<Instant> {
        self.retired
            .iter()
            .map(|(_, until)| {
                crate::time::later(now, until.duration_since(wall).unwrap_or_default())
            })
            .chain(self.rotate_at)
            .min()
    }

    /// The JWT bundle: the current key, then the retired ones.
    pub(crate) fn bundles(&self) -> BTreeMap<String, Bytes> {
        let keys: Vec<Value> = self
            .current
            .iter()
            .map(|key| key.jwk.clone())
            .chain(self.retired.iter().map(|(jwk, _)| jwk.clone()))
            .collect();
        BTreeMap::from([(self.trust_domain.clone(), jwt::jwks(&keys))])
    }

    /// The current signer, if any.
    pub(crate) fn issuer(&self) -> Option<Arc<dyn JwtIssuer>> {
        self.current.clone().map(|key| key as Arc<dyn JwtIssuer>)
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
            .current
            .as_ref()
            .unwrap()
            .sign(&id, &["a".into()], Duration::from_secs(60), now)
            .unwrap();
        let validate = |keys: &JwtKeys, token: &str, at: SystemTime| {
            jwt::validate(token, "a", &keys.bundles(), at).map(|v| v.spiffe_id)
        };
        assert_eq!(validate(&keys, &old, now), Ok(id.clone()));

        keys.rotate(now).unwrap();
        let new = keys
            .current
            .as_ref()
            .unwrap()
            .sign(&id, &["a".into()], Duration::from_secs(60), now)
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
        assert!(keys.next_wakeup(instant, now).unwrap() > instant + Duration::from_secs(3000));
    }

    #[test]
    fn provisioned_keys_sign_with_their_algorithm_and_a_key_id_every_enclave_shares() {
        use aws_lc_rs::encoding::AsDer as _;
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der = rsa.as_der().unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        for (der, alg) in [
            (p384.serialize_der(), "ES384"),
            (rsa_der.as_ref().to_vec(), "RS256"),
        ] {
            let signing = SigningKey::from_pkcs8_der(&der, "test").unwrap();
            let key = JwtKey::from_signing_key(&signing).unwrap();
            let again = JwtKey::from_signing_key(&signing).unwrap();
            assert_eq!(key.id(), again.id(), "the key ID depends on the key only");
            let token = key
                .sign(
                    &id,
                    &["a".into()],
                    Duration::from_secs(60),
                    SystemTime::now(),
                )
                .unwrap();
            let header: Value = serde_json::from_slice(
                &base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    token.split('.').next().unwrap(),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(header["alg"], alg);
            let td = TrustDomain::new("example.org").unwrap();
            let mut keys = JwtKeys::provisioned(&td, Duration::from_secs(60));
            assert!(keys.issuer().is_none());
            assert!(keys.set(key, SystemTime::now()));
            let validated = jwt::validate(&token, "a", &keys.bundles(), SystemTime::now()).unwrap();
            assert_eq!(validated.spiffe_id, id);
            keys.withdraw();
            assert!(jwt::validate(&token, "a", &keys.bundles(), SystemTime::now()).is_err());
        }
    }
}
