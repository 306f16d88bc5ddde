//! JWT-SVIDs (SPIFFE JWT-SVID specification): compact JWS encoding, JWKS documents with
//! `use: "jwt-svid"`, and validation against a trust domain's JWKS.
//!
//! Signing algorithms: ES256 (what the agent signs with), ES384, RS256 and PS256 for
//! provisioned keys. Validation accepts the specification's ES256/384/512,
//! RS256/384/512 and PS256/384/512; `alg: none`, HMAC and any algorithm whose family
//! does not match the key (`kty`) are refused.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use prost::bytes::Bytes;
use serde_json::{Map, Value, json};
use spiffe::SpiffeId;

/// The `use` of a JWT-SVID key in a SPIFFE bundle.
pub const KEY_USE: &str = "jwt-svid";

/// The largest token accepted for validation.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token being issued: signed at once with a local key, or asked of a server.
pub type Issuing<'a> = std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Issues a JWT-SVID. Implemented by the agent: it signs with its own key, or asks its
/// upstream (a SPIRE server signs them for the `spire` upstream).
pub trait JwtIssuer: Send + Sync + std::fmt::Debug + 'static {
    /// The key ID the next token will carry (tokens are cached per key).
    fn kid(&self) -> &str;

    /// A signed token for `spiffe_id` with these audiences, valid `ttl` from `now`.
    fn issue<'a>(
        &'a self,
        spiffe_id: &'a SpiffeId,
        audience: &'a [String],
        ttl: Duration,
        now: SystemTime,
    ) -> Issuing<'a>;
}

/// A signature algorithm of the JWT-SVID specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 SHA-256.
    Es256,
    /// ECDSA P-384 SHA-384.
    Es384,
    /// ECDSA P-521 SHA-512.
    Es512,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    Rs512,
    /// RSASSA-PSS SHA-256.
    Ps256,
    /// RSASSA-PSS SHA-384.
    Ps384,
    /// RSASSA-PSS SHA-512.
    Ps512,
}

impl Alg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::Es256,
            Self::Es384,
            Self::Es512,
            Self::Rs256,
            Self::Rs384,
            Self::Rs512,
            Self::Ps256,
            Self::Ps384,
            Self::Ps512,
        ]
        .into_iter()
        .find(|alg| alg.name() == name)
    }

    /// The EC curve, for the EC algorithms.
    fn curve(self) -> Option<&'static str> {
        match self {
            Self::Es256 => Some("P-256"),
            Self::Es384 => Some("P-384"),
            Self::Es512 => Some("P-521"),
            _ => None,
        }
    }

    fn ec_verification(self) -> Option<&'static dyn VerificationAlgorithm> {
        match self {
            Self::Es256 => Some(&signature::ECDSA_P256_SHA256_FIXED),
            Self::Es384 => Some(&signature::ECDSA_P384_SHA384_FIXED),
            Self::Es512 => Some(&signature::ECDSA_P521_SHA512_FIXED),
            _ => None,
        }
    }

    fn rsa_parameters(self) -> Option<&'static signature::RsaParameters> {
        match self {
            Self::Rs256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            Self::Rs384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            Self::Rs512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            Self::Ps256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
            Self::Ps384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
            Self::Ps512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
            _ => None,
        }
    }
}

/// The compact JWS of `claims` with header `{"alg", "kid", "typ": "JWT"}`, signed by
/// `sign` (which returns the JWS signature: `r || s` for ECDSA).
pub fn encode(
    alg: Alg,
    kid: &str,
    claims: &Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let header = json!({ "alg": alg.name(), "kid": kid, "typ": "JWT" });
    let mut token = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&B64.encode(signature));
    Ok(token)
}

/// The claims of a JWT-SVID: `sub`, `aud` (always an array), `exp` and `iat`.
pub fn claims(spiffe_id: &SpiffeId, audience: &[String], ttl: Duration, now: SystemTime) -> Value {
    let iat = unix(now);
    json!({
        "sub": spiffe_id.to_string(),
        "aud": audience,
        "exp": iat.saturating_add(ttl.as_secs().max(1)),
        "iat": iat,
    })
}

/// When a token should be replaced: half-way from its `iat` to its `exp` (read from the
/// token itself, which may come from a server whose default lifetime is not known here);
/// `None` when the claims cannot be read.
pub fn renew_time(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    let iat = claims.get("iat")?.as_u64()?;
    let exp = claims.get("exp")?.as_u64()?;
    let half = exp.checked_sub(iat)? / 2;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(iat.checked_add(half)?))
}

/// A public JWK of an EC key from its uncompressed point (`04 || x || y`).
pub fn ec_jwk(kid: &str, curve: &str, point: &[u8]) -> Result<Value, String> {
    let coordinate = match curve {
        "P-256" => 32,
        "P-384" => 48,
        "P-521" => 66,
        other => return Err(format!("curve {other} is not a JWT-SVID curve")),
    };
    if point.len() != 1 + 2 * coordinate || point[0] != 4 {
        return Err("not an uncompressed EC point".into());
    }
    Ok(json!({
        "kty": "EC",
        "crv": curve,
        "x": B64.encode(&point[1..=coordinate]),
        "y": B64.encode(&point[1 + coordinate..]),
        "kid": kid,
        "use": KEY_USE,
    }))
}

/// A public JWK of an RSA key from its modulus and exponent (big-endian).
pub fn rsa_jwk(kid: &str, modulus: &[u8], exponent: &[u8]) -> Value {
    json!({
        "kty": "RSA",
        "n": B64.encode(modulus),
        "e": B64.encode(exponent),
        "kid": kid,
        "use": KEY_USE,
    })
}

/// A JWKS document (`{"keys": [...]}`) of these JWKs.
pub fn jwks(keys: &[Value]) -> Bytes {
    Bytes::from(json!({ "keys": keys }).to_string())
}

/// Why a token was refused (`InvalidArgument` on the Workload API).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated token: its SPIFFE ID and all its claims.
#[derive(Debug)]
pub struct Validated {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

/// Validates `token` for `audience` against JWKS documents keyed by trust-domain ID
/// (`spiffe://example.org`), at `now`.
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &BTreeMap<String, Bytes>,
    now: SystemTime,
) -> Result<Validated, Invalid> {
    let bad = |why: String| Invalid(why);
    if token.len() > MAX_TOKEN_BYTES {
        return Err(bad(format!("token is over {MAX_TOKEN_BYTES} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(header64), Some(payload64), Some(signature64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "token is not a compact JWS (three base64url parts)".into()
        ));
    };
    let header: Map<String, Value> = decode_json(header64, "header")?;
    let payload: Map<String, Value> = decode_json(payload64, "payload")?;
    let signature = B64
        .decode(signature64)
        .map_err(|e| bad(format!("token signature is not base64url: {e}")))?;

    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = Alg::parse(alg_name).ok_or_else(|| {
        bad(format!(
            "token algorithm {alg_name:?} is not allowed; accepted: ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512"
        ))
    })?;
    if let Some(typ) = header.get("typ")
        && !matches!(typ.as_str(), Some("JWT" | "JOSE"))
    {
        return Err(bad(format!("token type {typ} is not JWT or JOSE")));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("token header has no key ID (kid)".into()))?;

    let subject = payload
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("token has no subject (sub)".into()))?;
    let spiffe_id = SpiffeId::new(subject)
        .map_err(|e| bad(format!("token subject {subject:?} is not a SPIFFE ID: {e}")))?;
    let td = spiffe_id.trust_domain().id_string();
    let jwks = bundles
        .get(&td)
        .ok_or_else(|| bad(format!("no JWT bundle for trust domain {td}")))?;
    let key = find_key(jwks, kid)
        .ok_or_else(|| bad(format!("key {kid:?} is not in the JWT bundle of {td}")))?;
    verify_signature(
        &key,
        alg,
        &token.as_bytes()[..header64.len() + 1 + payload64.len()],
        &signature,
    )
    .map_err(|why| bad(format!("token signature: {why}")))?;

    let now_s = unix(now);
    let exp = payload
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("token has no expiry (exp)".into()))?;
    if exp <= now_s {
        return Err(bad(format!("token has expired (exp {exp}, now {now_s})")));
    }
    if let Some(nbf) = payload.get("nbf").and_then(Value::as_u64)
        && nbf > now_s
    {
        return Err(bad(format!("token is not valid yet (nbf {nbf})")));
    }
    let audiences: Vec<&str> = match payload.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => return Err(bad("token has no audience (aud)".into())),
    };
    if !audiences.contains(&audience) {
        return Err(bad(format!(
            "token audience {audiences:?} does not contain {audience:?}"
        )));
    }
    Ok(Validated {
        spiffe_id,
        claims: payload,
    })
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, Invalid> {
    let bytes = B64
        .decode(part)
        .map_err(|e| Invalid(format!("token {what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Invalid(format!("token {what} is not a JSON object: {e}")))
}

fn find_key(jwks: &[u8], kid: &str) -> Option<Map<String, Value>> {
    let document: Value = serde_json::from_slice(jwks).ok()?;
    document
        .get("keys")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|key| {
            key.get("kid").and_then(Value::as_str) == Some(kid)
                && key
                    .get("use")
                    .and_then(Value::as_str)
                    .is_none_or(|u| u == KEY_USE)
        })
        .cloned()
}

/// Verifies with the JWK, refusing an algorithm of another family than the key's.
fn verify_signature(
    key: &Map<String, Value>,
    alg: Alg,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let field = |name: &str| {
        key.get(name)
            .and_then(Value::as_str)
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("the key has no valid {name:?}"))
    };
    let kty = key.get("kty").and_then(Value::as_str).unwrap_or("");
    match (
        kty,
        alg.curve(),
        alg.ec_verification(),
        alg.rsa_parameters(),
    ) {
        ("EC", Some(curve), Some(verification), _) => {
            let key_curve = key.get("crv").and_then(Value::as_str).unwrap_or("");
            if key_curve != curve {
                return Err(format!(
                    "{} needs a {curve} key, the key is {key_curve}",
                    alg.name()
                ));
            }
            let mut point = vec![4u8];
            point.extend(field("x")?);
            point.extend(field("y")?);
            UnparsedPublicKey::new(verification, point)
                .verify(message, signature)
                .map_err(|_| "does not verify".to_owned())
        }
        ("RSA", _, _, Some(params)) => {
            let (n, e) = (field("n")?, field("e")?);
            let public = signature::RsaPublicKeyComponents { n: &n, e: &e };
            public
                .verify(params, message, signature)
                .map_err(|_| "does not verify".to_owned())
        }
        (kty, ..) => Err(format!(
            "{} cannot be used with a key of type {kty:?}",
            alg.name()
        )),
    }
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        KeyPair as _, RsaKeyPair,
    };

    use super::*;

    const TD: &str = "spiffe://example.org";

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://example.org/w").unwrap()
    }

    fn ec_token(
        signing: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
        alg: Alg,
        curve: &str,
    ) -> (String, Bytes) {
        let pair = EcdsaKeyPair::generate(signing).unwrap();
        let jwk = ec_jwk("k1", curve, pair.public_key().as_ref()).unwrap();
        let claims = claims(
            &id(),
            &["a".into()],
            Duration::from_secs(60),
            SystemTime::now(),
        );
        let token = encode(alg, "k1", &claims, |m| {
            Ok(pair
                .sign(&SystemRandom::new(), m)
                .unwrap()
                .as_ref()
                .to_vec())
        })
        .unwrap();
        (token, jwks(&[jwk]))
    }

    fn rsa_token(alg: Alg) -> (String, Bytes) {
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let jwk = rsa_jwk(
            "r1",
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match alg {
            Alg::Rs256 => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            _ => &aws_lc_rs::signature::RSA_PSS_SHA256,
        };
        let claims = claims(
            &id(),
            &["a".into()],
            Duration::from_secs(60),
            SystemTime::now(),
        );
        let token = encode(alg, "r1", &claims, |m| {
            let mut signature = vec![0; pair.public_modulus_len()];
            pair.sign(padding, &SystemRandom::new(), m, &mut signature)
                .unwrap();
            Ok(signature)
        })
        .unwrap();
        (token, jwks(&[jwk]))
    }

    fn bundles(jwks: Bytes) -> BTreeMap<String, Bytes> {
        BTreeMap::from([(TD.to_owned(), jwks)])
    }

    #[test]
    fn tokens_of_every_signing_algorithm_validate() {
        for (token, jwks) in [
            ec_token(&ECDSA_P256_SHA256_FIXED_SIGNING, Alg::Es256, "P-256"),
            ec_token(&ECDSA_P384_SHA384_FIXED_SIGNING, Alg::Es384, "P-384"),
            rsa_token(Alg::Rs256),
            rsa_token(Alg::Ps256),
        ] {
            let validated = validate(&token, "a", &bundles(jwks), SystemTime::now()).unwrap();
            assert_eq!(validated.spiffe_id, id());
            assert_eq!(validated.claims["aud"], json!(["a"]));
        }
    }

    #[test]
    fn algorithm_confusion_and_bad_headers_are_refused() {
        let (token, jwks) = ec_token(&ECDSA_P256_SHA256_FIXED_SIGNING, Alg::Es256, "P-256");
        let (_, rest) = token.split_once('.').unwrap();
        let with_header = |header: Value| format!("{}.{rest}", B64.encode(header.to_string()));
        let bundles = bundles(jwks);
        for (header, why) in [
            (
                json!({"alg": "RS256", "kid": "k1"}),
                "cannot be used with a key of type \"EC\"",
            ),
            (json!({"alg": "ES384", "kid": "k1"}), "needs a P-384 key"),
            (
                json!({"alg": "none", "kid": "k1"}),
                "\"none\" is not allowed",
            ),
            (
                json!({"alg": "HS256", "kid": "k1"}),
                "\"HS256\" is not allowed",
            ),
            (
                json!({"alg": "ES256", "kid": "k1", "typ": "jwt+x"}),
                "is not JWT or JOSE",
            ),
            (json!({"alg": "ES256"}), "no key ID"),
        ] {
            let error =
                validate(&with_header(header), "a", &bundles, SystemTime::now()).unwrap_err();
            assert!(error.0.contains(why), "{why:?} not in {error}");
        }
        // `typ: JOSE` is allowed, but the header is signed: changing it breaks the signature.
        let error = validate(
            &with_header(json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"})),
            "a",
            &bundles,
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(error.0.contains("does not verify"), "{error}");
    }

    #[test]
    fn time_and_claims_are_checked() {
        let (token, jwks) = ec_token(&ECDSA_P256_SHA256_FIXED_SIGNING, Alg::Es256, "P-256");
        let bundles = bundles(jwks);
        let later = SystemTime::now() + Duration::from_secs(61);
        assert!(
            validate(&token, "a", &bundles, later)
                .unwrap_err()
                .0
                .contains("expired")
        );
        assert!(
            validate(&token, "b", &bundles, SystemTime::now())
                .unwrap_err()
                .0
                .contains("does not contain")
        );
        let other = BTreeMap::from([("spiffe://other.org".to_owned(), Bytes::new())]);
        assert!(
            validate(&token, "a", &other, SystemTime::now())
                .unwrap_err()
                .0
                .contains("no JWT bundle")
        );
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(
            validate(&huge, "a", &bundles, SystemTime::now())
                .unwrap_err()
                .0
                .contains("over")
        );
    }
}
