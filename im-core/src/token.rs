//! Tokens: HS256 JWTs with `tenant`, `sub` (user id), `role`, `exp` (and
//! `iat`, `name`, `avatar`). Part of the protocol: the server verifies them
//! at `Auth`; `dongdong token`, the bot, tests and any backend that mints
//! tokens for its users sign them with the same [`TokenSigner`].

use crate::Role;
use crate::ids::validate_id;
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
    /// Optional display name (at most 64 printable characters), shown to
    /// the other side of a chat.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Optional picture: an http(s) URL of at most 1024 bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub avatar: String,
}

/// Longest `name` claim, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest `avatar` claim, in bytes.
pub const MAX_AVATAR_BYTES: usize = 1024;

impl Claims {
    /// The name and avatar claims, or which one is wrong and why.
    fn check_identity(&self) -> Result<(), AuthError> {
        if self.name.chars().count() > MAX_NAME_CHARS || self.name.chars().any(char::is_control) {
            return Err(AuthError::BadClaim(format!("name must be at most {MAX_NAME_CHARS} printable characters")));
        }
        let url = self.avatar.starts_with("https://") || self.avatar.starts_with("http://");
        if !self.avatar.is_empty() && (!url || self.avatar.len() > MAX_AVATAR_BYTES) {
            return Err(AuthError::BadClaim(format!(
                "avatar must be an http(s) URL of at most {MAX_AVATAR_BYTES} bytes"
            )));
        }
        Ok(())
    }
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
        self.mint_named(tenant, user, role, ttl, "", "")
    }

    /// A token that also carries a display `name` and an `avatar` URL (each
    /// may be empty).
    pub fn mint_named(
        &self,
        tenant: &str,
        user: &str,
        role: Role,
        ttl: Duration,
        name: &str,
        avatar: &str,
    ) -> Result<String, AuthError> {
        validate_id("tenant", tenant).map_err(AuthError::BadClaim)?;
        validate_id("user", user).map_err(AuthError::BadClaim)?;
        let now = crate::now_ms() / 1000;
        let claims = Claims {
            tenant: tenant.into(),
            sub: user.into(),
            role,
            exp: now + ttl.as_secs(),
            iat: now,
            name: name.into(),
            avatar: avatar.into(),
        };
        claims.check_identity()?;
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
        claims.check_identity()?;
        Ok(claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
            &Claims {
                tenant: "acme".into(),
                sub: "a".into(),
                role: Role::Customer,
                exp: 1000,
                iat: 0,
                name: String::new(),
                avatar: String::new(),
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert_eq!(s.verify(&expired), Err(AuthError::Expired));
        assert!(s.mint("", "alice", Role::Agent, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn name_and_avatar_claims() {
        let s = TokenSigner::new(b"secret-one");
        let hour = Duration::from_secs(3600);
        let t = s.mint_named("acme", "amy", Role::Agent, hour, "王芳 Amy", "https://img.example/a.png").unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!((c.name.as_str(), c.avatar.as_str()), ("王芳 Amy", "https://img.example/a.png"));
        // Without them the token is as before.
        let plain = s.verify(&s.mint("acme", "amy", Role::Agent, hour).unwrap()).unwrap();
        assert_eq!((plain.name.as_str(), plain.avatar.as_str()), ("", ""));
        for (name, avatar) in
            [("a\nb", ""), (&*"x".repeat(65), ""), ("", "javascript:alert(1)"), ("", "data:image/png,")]
        {
            assert!(matches!(
                s.mint_named("acme", "amy", Role::Agent, hour, name, avatar),
                Err(AuthError::BadClaim(_))
            ));
        }
        // A token signed elsewhere with a bad claim is refused on the way in.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                tenant: "acme".into(),
                sub: "a".into(),
                role: Role::Customer,
                exp: u64::MAX / 2,
                iat: 0,
                name: String::new(),
                avatar: "javascript:alert(1)".into(),
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .unwrap();
        assert!(matches!(s.verify(&forged), Err(AuthError::BadClaim(_))));
    }
}
