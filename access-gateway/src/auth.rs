//! HS256 JWTs: `tenant`, `sub` (user id), `role`, `exp`. The same signer mints
//! tokens for `dongdong token` and verifies them at `Auth`.

use im_core::Role;
use im_core::ids::validate_id;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Claims of a dongdong token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token signature does not match this server's secret")]
    BadSignature,
    #[error("token is malformed or misses a claim (tenant, sub, role, exp): {0}")]
    Malformed(String),
    #[error("token claim {0}")]
    BadClaim(String),
}

/// Signs and verifies tokens with one shared secret.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// A token for `user` of `tenant` with `role`, valid for `ttl`.
    pub fn mint(&self, tenant: &str, user: &str, role: Role, ttl: Duration) -> Result<String, AuthError> {
        validate_id("tenant", tenant).map_err(AuthError::BadClaim)?;
        validate_id("user", user).map_err(AuthError::BadClaim)?;
        let now = im_core::now_ms() / 1000;
        let claims = Claims { tenant: tenant.into(), sub: user.into(), role, exp: now + ttl.as_secs(), iat: now };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Verifies signature and expiry and checks the ids in the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > 4096 {
            return Err(AuthError::Malformed("longer than 4096 bytes".into()));
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        validate_id("tenant", &claims.tenant).map_err(AuthError::BadClaim)?;
        validate_id("sub", &claims.sub).map_err(AuthError::BadClaim)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_reject() {
        let s = TokenSigner::new(b"secret-one");
        let t = s.mint("acme", "alice", Role::Agent, Duration::from_secs(60)).unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!((c.tenant.as_str(), c.sub.as_str(), c.role), ("acme", "alice", Role::Agent));
        assert_eq!(TokenSigner::new(b"other").verify(&t), Err(AuthError::BadSignature));
        assert!(matches!(s.verify("not-a-jwt"), Err(AuthError::Malformed(_))));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims { tenant: "acme".into(), sub: "a".into(), role: Role::Customer, exp: 1000, iat: 0 },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert_eq!(s.verify(&expired), Err(AuthError::Expired));
        assert!(s.mint("", "alice", Role::Agent, Duration::from_secs(1)).is_err());
    }
}
