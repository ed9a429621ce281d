//! Authentication: HS256 JWTs (`sub` is the user id, `exp` enforced, `role: "admin"` for
//! operators, `rooms` limiting the rooms a user may join) and server-side API keys for backends.

use std::collections::HashSet;

use chrono::Utc;
use herald_core::identity::is_unsafe_in_name;
use herald_core::{Identity, Role};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Room names or `prefix*` patterns the user may join; absent means any room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid token: {0}")]
pub struct AuthError(String);

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    api_keys: HashSet<String>,
    /// Tokens this server has verified, with their identity and `exp`. A client sends the same
    /// token with every request, and checking its signature and decoding its claims again was
    /// ~7 % of the server's CPU per HTTP publish (docs/performance.md). Keyed by the whole
    /// token, so only a token that passed verification is ever found; `exp` is checked on
    /// every use.
    verified: Cache<Box<str>, (Identity, i64)>,
}

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECS: i64 = 5;
/// Verified tokens remembered (the least used are forgotten first).
const VERIFIED_TOKENS: usize = 1024;
/// Longer tokens (long `rooms` lists) are verified every time rather than remembered.
const MAX_REMEMBERED_TOKEN: usize = 2048;

/// The shortest JWT secret accepted: HS256 is only as strong as its key, and RFC 7518 asks
/// for one at least as long as the hash (32 bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses a JWT secret too short to be safe, saying how to make one.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "JWT_SECRET (jwt_secret) is {} bytes; it must be at least {MIN_SECRET_BYTES} \
             (for example the output of `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(())
}

/// The identity behind a valid API key. A service publishes as any user it names.
pub const SERVICE_USER: &str = "service";

impl Auth {
    pub fn new(secret: &str, api_keys: &[String]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            api_keys: api_keys.iter().cloned().collect(),
            verified: Cache::new(VERIFIED_TOKENS),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, Utc::now().timestamp())
    }

    /// Verifies `token` as of `now` (Unix seconds).
    fn verify_at(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        if self.api_keys.contains(token) {
            return Ok(Identity::with_role(SERVICE_USER, Role::Service));
        }
        if let Some((identity, exp)) = self.verified.get(token) {
            return unexpired(exp, now).map(|()| identity);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(e.to_string()))?;
        // RFC 7515: a `crit` header names extensions the receiver must understand; Herald
        // understands none, so such a token is refused rather than half-obeyed.
        if data.header.crit.is_some() {
            return Err(AuthError("unsupported critical header (crit)".into()));
        }
        let c = data.claims;
        unexpired(c.exp, now)?;
        if c.sub.is_empty() || c.sub.len() > 256 || c.sub.chars().any(is_unsafe_in_name) {
            return Err(AuthError(
                "sub must be 1..=256 bytes without control or bidirectional-control characters"
                    .into(),
            ));
        }
        let role = match c.role.as_deref() {
            Some("admin") => Role::Admin,
            _ => Role::User,
        };
        let identity = Identity {
            user_id: c.sub,
            role,
            rooms: c.rooms,
            expires_at: Some(c.exp + LEEWAY_SECS),
        };
        if token.len() <= MAX_REMEMBERED_TOKEN {
            self.verified
                .insert(token.into(), (identity.clone(), c.exp));
        }
        Ok(identity)
    }

    /// Signs a token for `user` valid for `ttl_secs`.
    pub fn mint(
        &self,
        user: &str,
        role: Option<&str>,
        rooms: Option<Vec<String>>,
        ttl_secs: i64,
    ) -> String {
        let claims = Claims {
            sub: user.to_owned(),
            exp: Utc::now().timestamp() + ttl_secs,
            role: role.map(str::to_owned),
            rooms,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }
}

/// The check `decode` makes on `exp`, for a token remembered from an earlier request.
fn unexpired(exp: i64, now: i64) -> Result<(), AuthError> {
    if exp < now - LEEWAY_SECS {
        return Err(AuthError(
            jsonwebtoken::errors::Error::from(ErrorKind::ExpiredSignature).to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

    fn sign(header: Header, claims: serde_json::Value) -> String {
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn not_before_critical_headers_and_unsafe_ids_are_refused() {
        let auth = Auth::new(SECRET, &[]);
        let now = Utc::now().timestamp();
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "alice", "exp": now + 60});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let hs256 = || Header::new(Algorithm::HS256);
        let early = sign(hs256(), claims(serde_json::json!({"nbf": now + 600})));
        let late = auth.verify(&early).unwrap_err();
        assert!(late.to_string().contains("ImmatureSignature"), "{late}");
        assert!(
            auth.verify(&sign(hs256(), claims(serde_json::json!({"nbf": now - 10}))))
                .is_ok()
        );
        let mut critical = hs256();
        critical.crit = Some(vec!["exp-ext".into()]);
        let refused = auth
            .verify(&sign(critical, claims(serde_json::json!({}))))
            .unwrap_err();
        assert!(refused.to_string().contains("crit"), "{refused}");
        for sub in ["al\u{202e}ice", "bob\n", "\u{2066}x"] {
            let t = sign(hs256(), claims(serde_json::json!({"sub": sub})));
            assert!(auth.verify(&t).is_err(), "{sub:?}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret(&"x".repeat(31)).is_err());
        assert!(check_secret(SECRET).is_ok());
    }

    #[test]
    fn round_trip_and_rejections() {
        let auth = Auth::new(SECRET, &["key-1".into()]);
        let t = auth.mint("alice", None, None, 60);
        let alice = auth.verify(&t).unwrap();
        assert_eq!((alice.user_id.as_str(), alice.role), ("alice", Role::User));
        let exp = alice.expires_at.unwrap() - LEEWAY_SECS;
        assert!(
            (exp - Utc::now().timestamp() - 60).abs() <= 1,
            "expires with exp"
        );
        let admin = auth.mint("ops", Some("admin"), None, 60);
        assert_eq!(auth.verify(&admin).unwrap().role, Role::Admin);
        assert!(
            auth.verify(&auth.mint("alice", None, None, -3600)).is_err(),
            "expired"
        );
        assert!(
            Auth::new("other", &[]).verify(&t).is_err(),
            "wrong signature"
        );
        assert_eq!(auth.verify("key-1").unwrap().role, Role::Service);
        let limited = auth.mint("carol", None, Some(vec!["team-*".into()]), 60);
        assert_eq!(
            auth.verify(&limited).unwrap().rooms,
            Some(vec!["team-*".to_owned()])
        );
        assert!(auth.verify("garbage").is_err());
        // {"alg":"none"} with an empty signature.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(auth.verify(none).is_err(), "alg none");
    }

    #[test]
    fn a_verified_token_is_remembered_but_still_expires() {
        let auth = Auth::new(SECRET, &["key-1".into()]);
        let now = Utc::now().timestamp();
        let t = auth.mint("carol", Some("admin"), Some(vec!["team-*".into()]), 60);
        let first = auth.verify_at(&t, now).unwrap();
        assert_eq!(auth.verified.len(), 1, "remembered once verified");
        assert_eq!(auth.verify_at(&t, now).unwrap(), first, "the same identity");
        assert_eq!(first.role, Role::Admin);
        // Within the leeway after `exp`, then past it: the remembered token is refused.
        assert!(auth.verify_at(&t, now + 60 + LEEWAY_SECS - 1).is_ok());
        let late = auth.verify_at(&t, now + 60 + LEEWAY_SECS + 2).unwrap_err();
        assert!(late.to_string().contains("ExpiredSignature"), "{late}");
        // Only tokens that pass are remembered.
        let forged = Auth::new("other", &[]).mint("carol", Some("admin"), None, 60);
        assert!(auth.verify(&forged).is_err());
        assert!(auth.verify("garbage").is_err());
        assert!(auth.verify(&auth.mint("dave", None, None, -3600)).is_err());
        auth.verify("key-1").unwrap();
        assert_eq!(auth.verified.len(), 1);
    }
}
