//! Revoked tokens: the one check of a token that needs storage (signature,
//! expiry and claims are `im_core::token`'s).

use im_core::token::Claims;

/// Whether the token was revoked: issued (`iat`) before the time its
/// user's tokens are refused from. Checked at Auth and by the HTTP API.
pub async fn is_revoked(revocations: &dyn storage::Revocations, claims: &Claims) -> storage::Result<bool> {
    Ok(claims.iat < revocations.revoked_before(&claims.tenant, &claims.sub).await?)
}
