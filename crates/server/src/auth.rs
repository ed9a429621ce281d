//! Authentication: HS256 JWTs (`sub` is the user id, `exp` enforced, `role: "admin"` for
//! operators, `rooms` limiting the rooms a user may join) and server-side API keys for backends.

use std::collections::HashSet;

use chrono::Utc;
use herald_core::{Identity, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
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
}

/// The identity behind a valid API key. A service publishes as any user it names.
pub const SERVICE_USER: &str = "service";

impl Auth {
    pub fn new(secret: &str, api_keys: &[String]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            api_keys: api_keys.iter().cloned().collect(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if self.api_keys.contains(token) {
            return Ok(Identity::with_role(SERVICE_USER, Role::Service));
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(e.to_string()))?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 256 {
            return Err(AuthError("sub must be 1..=256 characters".into()));
        }
        let role = match c.role.as_deref() {
            Some("admin") => Role::Admin,
            _ => Role::User,
        };
        Ok(Identity {
            user_id: c.sub,
            role,
            rooms: c.rooms,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let auth = Auth::new("s3cret", &["key-1".into()]);
        let t = auth.mint("alice", None, None, 60);
        assert_eq!(auth.verify(&t).unwrap(), Identity::user("alice"));
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
}
