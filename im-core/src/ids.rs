//! Identifiers: message ids (UUIDv7), deterministic 1:1 conversation ids,
//! roles, and the validation rules for ids that arrive from clients.

use sha2::{Digest, Sha256};
use std::fmt;

/// Longest user id, device id or client_msg_id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// A conversation id: `c` followed by 32 hex digits (see [`conversation_id`]).
pub type ConversationId = String;

/// The id of a 1:1 conversation: `"c" + hex(sha256(tenant NUL a NUL b)[..16])`
/// where `a <= b` are the two user ids. Deterministic, so both users and any
/// node derive the same id; the tenant is part of the hash, so equal user ids
/// in two tenants never share a conversation.
pub fn conversation_id(tenant: &str, user_a: &str, user_b: &str) -> ConversationId {
    let (a, b) = if user_a <= user_b { (user_a, user_b) } else { (user_b, user_a) };
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0u8]);
    h.update(a.as_bytes());
    h.update([0u8]);
    h.update(b.as_bytes());
    let digest = h.finalize();
    format!("c{}", hex::encode(&digest[..16]))
}

/// A new message id: a UUIDv7 string, time-ordered and, within one process,
/// strictly increasing.
pub fn new_msg_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks an id from the wire: non-empty, at most [`MAX_ID_BYTES`], and free of
/// control characters (they would corrupt logs and composite storage keys).
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("{what} is longer than {MAX_ID_BYTES} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// Checks an id the server made (a message, session, left message, file or
/// quick reply id): a UUID in its hyphenated form, as the server gave it.
/// A malformed id is the client's mistake (`INVALID_ARGUMENT`), not a
/// missing record (`NOT_FOUND`).
pub fn validate_uuid(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if id.len() != 36 || uuid::Uuid::try_parse(id).is_err() {
        return Err(format!(
            "{what} is not an id this server gave (a UUID such as 0190b1f2-0000-7000-8000-000000000000)"
        ));
    }
    Ok(())
}

/// Checks a conversation id from the wire: `c` and 32 lowercase hex digits
/// (see [`conversation_id`]).
pub fn validate_conversation_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let well_formed = id.len() == 33
        && id.starts_with('c')
        && id[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !well_formed {
        return Err(format!("{what} is not a conversation id (c and 32 hex digits)"));
    }
    Ok(())
}

/// What a token allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Agent,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: expected customer, agent or admin")),
        }
    }
}

/// A user within a tenant: the unit of presence and of conversation membership.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantUser {
    pub tenant: String,
    pub user: String,
}

impl TenantUser {
    pub fn new(tenant: impl Into<String>, user: impl Into<String>) -> Self {
        Self { tenant: tenant.into(), user: user.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_id_is_symmetric_and_tenant_scoped() {
        let ab = conversation_id("t1", "alice", "bob");
        assert_eq!(ab, conversation_id("t1", "bob", "alice"));
        assert_ne!(ab, conversation_id("t2", "alice", "bob"));
        assert_eq!(ab.len(), 33);
        assert!(ab.starts_with('c'));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(conversation_id("t", "a", "bc"), conversation_id("t", "ab", "c"));
    }

    #[test]
    fn server_ids_and_conversation_ids_are_checked_by_form() {
        assert!(validate_uuid("msg_id", &new_msg_id()).is_ok());
        for bad in ["", "not-a-msg-id", "0190b1f2000070008000000000000000", "{0190b1f2-0000-7000-8000-000000000000}"] {
            assert!(validate_uuid("msg_id", bad).is_err(), "{bad:?}");
        }
        assert!(validate_conversation_id("c", &conversation_id("t", "a", "b")).is_ok());
        for bad in ["", "c123", "x0123456789abcdef0123456789abcdef", "c0123456789ABCDEF0123456789ABCDEF"] {
            assert!(validate_conversation_id("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn msg_ids_increase() {
        let a = new_msg_id();
        let b = new_msg_id();
        assert!(b > a);
    }

    #[test]
    fn id_validation() {
        assert!(validate_id("user id", "alice").is_ok());
        assert!(validate_id("user id", "").is_err());
        assert!(validate_id("user id", &"x".repeat(129)).is_err());
        assert!(validate_id("user id", "a\nb").is_err());
    }
}

/// One terminal of one user: where messages are delivered and acked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    pub tenant: String,
    pub user: String,
    pub device: String,
}

impl DeviceKey {
    pub fn new(tenant: impl Into<String>, user: impl Into<String>, device: impl Into<String>) -> Self {
        Self { tenant: tenant.into(), user: user.into(), device: device.into() }
    }
}
