//! The cluster backend: Redis for presence, devices, pending ids and the
//! cross-node bus; MongoDB for the message log. Any number of identical nodes
//! share them. The key schema and the collection are documented in
//! docs/storage.md.
//!
//! Redis keys of one user share the hash tag `{<len(tenant)>:<tenant>:<user>}`,
//! so every script touches a single Redis Cluster slot.
//!
//! The settings ([`ClusterOptions`]) are always compiled; the drivers (and
//! with them redis and mongodb) only with the `backend` feature, on by
//! default.

mod options;
pub use options::ClusterOptions;

#[cfg(feature = "backend")]
mod backend;
#[cfg(feature = "backend")]
pub use backend::*;
