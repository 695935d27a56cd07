//! Keys and credentials: the App's RS256 JWTs, installation tokens, the
//! Actions-service admin token, and the runners' OAuth client assertions.
//!
//! GitHub authenticates each hop of the chain differently, and berth must get
//! every hop right, so the simulator checks each the way GitHub does:
//! App JWTs are verified against the App's public key with GitHub's time rules
//! (`iat` not in the future beyond a small skew, `exp` in the future and at
//! most 10 minutes after `iat`, `iss` = app id or client id); the admin token
//! is a real JWT because the scale-set client reads its `exp`; runners sign a
//! client assertion with the RSA key from their JIT config.
//!
//! RSA key generation is slow in debug builds, so generated keys are cached
//! once per process ([`std::sync::OnceLock`]).

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::pkcs8::LineEnding;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Allowed clock skew for `iat` in the future, seconds.
pub const IAT_SKEW_SECS: i64 = 60;
/// Longest JWT lifetime GitHub accepts (`exp - iat`), seconds.
pub const MAX_JWT_LIFETIME_SECS: i64 = 600;

/// An RSA key pair with the encodings the simulator needs.
#[derive(Clone)]
pub struct KeyPair {
    private: RsaPrivateKey,
    /// PKCS#1 PEM of the private key (what GitHub hands out for an App).
    pub private_pem: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair(..)")
    }
}

impl KeyPair {
    /// Wraps a private key.
    pub fn from_private(private: RsaPrivateKey) -> Result<Self> {
        let private_pem = private
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| Error::Crypto(e.to_string()))?
            .to_string();
        let der = private
            .to_pkcs1_der()
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let public_der = private
            .to_public_key()
            .to_pkcs1_der()
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let decoding = DecodingKey::from_rsa_der(public_der.as_bytes());
        Ok(KeyPair {
            private,
            private_pem,
            encoding,
            decoding,
        })
    }

    /// Parses a PKCS#1 or PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let private = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|e| Error::Config(format!("app key is not an RSA PEM key: {e}")))?;
        Self::from_private(private)
    }

    /// Generates a fresh 2048-bit key (slow; prefer [`cached_key`]).
    pub fn generate() -> Result<Self> {
        let mut rng = rand::thread_rng();
        let private =
            RsaPrivateKey::new(&mut rng, 2048).map_err(|e| Error::Crypto(e.to_string()))?;
        Self::from_private(private)
    }

    /// Key for signing RS256 JWTs.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// Key for verifying RS256 JWTs.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The key as .NET `RSAParameters` (base64 big-endian), the shape of a
    /// runner's `.credentials_rsaparams` file.
    pub fn rsa_params(&self) -> RsaParams {
        let k = &self.private;
        let primes = k.primes();
        let b = |n: &BigUint| STANDARD.encode(n.to_bytes_be());
        let p = &primes[0];
        let q = &primes[1];
        let one = BigUint::from(1u8);
        let dp = k.d() % (p - &one);
        let dq = k.d() % (q - &one);
        // inverseQ = q^-1 mod p, via Fermat (p is prime): q^(p-2) mod p.
        let inverse_q = q.modpow(&(p - BigUint::from(2u8)), p);
        RsaParams {
            d: b(k.d()),
            dp: b(&dp),
            dq: b(&dq),
            exponent: b(k.e()),
            inverse_q: b(&inverse_q),
            modulus: b(k.n()),
            p: b(p),
            q: b(q),
        }
    }
}

/// `.credentials_rsaparams`: .NET `RSAParametersSerializable`, camelCase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaParams {
    /// Private exponent.
    pub d: String,
    /// d mod (p-1).
    pub dp: String,
    /// d mod (q-1).
    pub dq: String,
    /// Public exponent.
    pub exponent: String,
    /// q^-1 mod p.
    #[serde(rename = "inverseQ")]
    pub inverse_q: String,
    /// Modulus.
    pub modulus: String,
    /// First prime.
    pub p: String,
    /// Second prime.
    pub q: String,
}

impl RsaParams {
    /// Rebuilds the private key (what the runner stand-in signs with).
    pub fn to_key_pair(&self) -> Result<KeyPair> {
        let dec = |s: &str, what: &str| -> Result<BigUint> {
            let bytes = STANDARD
                .decode(s)
                .map_err(|e| Error::Config(format!("rsaparams {what} is not base64: {e}")))?;
            Ok(BigUint::from_bytes_be(&bytes))
        };
        let n = dec(&self.modulus, "modulus")?;
        let e = dec(&self.exponent, "exponent")?;
        let d = dec(&self.d, "d")?;
        let p = dec(&self.p, "p")?;
        let q = dec(&self.q, "q")?;
        let key = RsaPrivateKey::from_components(n, e, d, vec![p, q])
            .map_err(|e| Error::Config(format!("rsaparams do not form an RSA key: {e}")))?;
        key.validate()
            .map_err(|e| Error::Config(format!("rsaparams do not form a valid RSA key: {e}")))?;
        KeyPair::from_private(key)
    }
}

/// Which of the per-process generated keys.
#[derive(Debug, Clone, Copy)]
pub enum KeyPurpose {
    /// The GitHub App key.
    App,
    /// The key handed to runners in JIT configs.
    Runner,
}

/// A generated key, made once per process and purpose.
pub fn cached_key(purpose: KeyPurpose) -> Result<Arc<KeyPair>> {
    static APP: OnceLock<Arc<KeyPair>> = OnceLock::new();
    static RUNNER: OnceLock<Arc<KeyPair>> = OnceLock::new();
    let cell = match purpose {
        KeyPurpose::App => &APP,
        KeyPurpose::Runner => &RUNNER,
    };
    if let Some(k) = cell.get() {
        return Ok(k.clone());
    }
    let k = Arc::new(KeyPair::generate()?);
    Ok(cell.get_or_init(|| k).clone())
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A random token of `len` alphanumeric characters after `prefix`.
pub fn random_token(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

#[derive(Debug, Deserialize)]
struct AppClaims {
    iss: Option<Value>,
    iat: Option<i64>,
    exp: Option<i64>,
}

/// Verifies a GitHub App JWT the way GitHub does. `Ok(())` when accepted;
/// otherwise a 401 with GitHub's message.
pub fn verify_app_jwt(token: &str, key: &KeyPair, app_id: u64, client_id: &str) -> Result<()> {
    let undecodable = || Error::Unauthorized("A JSON web token could not be decoded".into());
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AppClaims>(token, key.decoding_key(), &validation)
        .map_err(|_| undecodable())?;
    let claims = data.claims;
    let now = now_secs();
    let iat = claims.iat.ok_or_else(|| {
        Error::Unauthorized(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".into(),
        )
    })?;
    if iat > now + IAT_SKEW_SECS {
        return Err(Error::Unauthorized(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".into(),
        ));
    }
    let exp = claims.exp.ok_or_else(|| {
        Error::Unauthorized("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".into())
    })?;
    if exp <= now {
        return Err(Error::Unauthorized(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".into(),
        ));
    }
    if exp - iat > MAX_JWT_LIFETIME_SECS || exp > now + MAX_JWT_LIFETIME_SECS + IAT_SKEW_SECS {
        return Err(Error::Unauthorized(
            "'Expiration time' claim ('exp') is too far in the future".into(),
        ));
    }
    let iss_ok = match &claims.iss {
        Some(Value::Number(n)) => n.as_u64() == Some(app_id),
        Some(Value::String(s)) => s == &app_id.to_string() || s == client_id,
        _ => false,
    };
    if !iss_ok {
        return Err(Error::Unauthorized(
            "'Issuer' claim ('iss') must identify this GitHub App (its app id or client id)".into(),
        ));
    }
    Ok(())
}

/// Signs an App JWT (what berth's GitHub client does); used by tests and tools.
pub fn sign_app_jwt(key: &KeyPair, iss: &str, iat: i64, exp: i64) -> Result<String> {
    let claims = serde_json::json!({"iss": iss, "iat": iat, "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key.encoding_key())
        .map_err(|e| Error::Crypto(e.to_string()))
}

/// Claims of the Actions-service admin token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClaims {
    /// Always `ghsim`.
    pub iss: String,
    /// Scope the token was issued for: `acme` or `acme/widgets`.
    pub scope: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry (the scale-set client refreshes 60 s before it).
    pub exp: i64,
}

/// Issues and checks HS256 tokens signed with a per-simulator secret.
#[derive(Clone)]
pub struct TokenSigner {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl Default for TokenSigner {
    fn default() -> Self {
        let secret: [u8; 32] = rand::thread_rng().r#gen();
        TokenSigner {
            enc: EncodingKey::from_secret(&secret),
            dec: DecodingKey::from_secret(&secret),
        }
    }
}

impl TokenSigner {
    /// Signs admin claims.
    pub fn sign_admin(&self, claims: &AdminClaims) -> Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .map_err(|e| Error::Crypto(e.to_string()))
    }

    /// Verifies an admin token: signature and expiry.
    pub fn verify_admin(&self, token: &str) -> Result<AdminClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<AdminClaims>(token, &self.dec, &v)
            .map(|d| d.claims)
            .map_err(|e| Error::Actions {
                status: axum::http::StatusCode::UNAUTHORIZED,
                type_key: "VssUnauthorizedException",
                message: format!("admin token rejected: {e}"),
            })
    }
}

/// Claims of a runner's client assertion (`sub` = `iss` = clientId, `aud` = authorizationUrl).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Client id.
    pub sub: String,
    /// Client id.
    pub iss: String,
    /// The authorization URL.
    pub aud: String,
    /// Unique id.
    pub jti: String,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
}

/// Signs a runner client assertion (runner side).
pub fn sign_assertion(key: &KeyPair, client_id: &str, audience: &str) -> Result<String> {
    let now = now_secs();
    let claims = AssertionClaims {
        sub: client_id.into(),
        iss: client_id.into(),
        aud: audience.into(),
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: now - 30,
        iat: now - 30,
        exp: now + 300,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key.encoding_key())
        .map_err(|e| Error::Crypto(e.to_string()))
}

/// Verifies a runner client assertion (simulator side); returns the client id.
pub fn verify_assertion(token: &str, key: &KeyPair, audience: &str) -> Result<String> {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    v.leeway = 30;
    let data = jsonwebtoken::decode::<AssertionClaims>(token, key.decoding_key(), &v)
        .map_err(|e| Error::Unauthorized(format!("client assertion rejected: {e}")))?;
    if data.claims.sub != data.claims.iss {
        return Err(Error::Unauthorized(
            "client assertion: sub and iss differ".into(),
        ));
    }
    Ok(data.claims.sub)
}

/// base64url without padding (JWT segments).
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
