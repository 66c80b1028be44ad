//! Where this node's devices are connected: in memory, since a single
//! node's connections die with it.

use async_trait::async_trait;
use dashmap::DashMap;
use storage::{DeviceKey, PresenceEntry, PresenceRegistry, Result};

/// Presence of one node's connections, in memory: per user (keyed by
/// `tenant NUL user`), the entries of their connected devices. Lean on
/// purpose, one entry per open connection: most users have one device, and
/// its entry is kept inline.
#[derive(Default)]
pub struct MemoryPresence {
    users: DashMap<Box<str>, Devices>,
    /// Recorded state per user: `ONLINE`, or when last seen (ms).
    seen: DashMap<Box<str>, u64>,
}

/// The connected devices of one user.
enum Devices {
    One(PresenceEntry),
    Many(Vec<PresenceEntry>),
}

impl Devices {
    fn as_slice(&self) -> &[PresenceEntry] {
        match self {
            Devices::One(e) => std::slice::from_ref(e),
            Devices::Many(v) => v,
        }
    }
}

fn user_key(tenant: &str, user: &str) -> Box<str> {
    let mut key = String::with_capacity(tenant.len() + 1 + user.len());
    key.push_str(tenant);
    key.push('\0');
    key.push_str(user);
    key.into_boxed_str()
}

#[async_trait]
impl PresenceRegistry for MemoryPresence {
    async fn register(&self, entry: PresenceEntry) -> Result<Option<PresenceEntry>> {
        let key = user_key(&entry.device.tenant, &entry.device.user);
        let mut slot = match self.users.entry(key) {
            dashmap::Entry::Vacant(v) => {
                v.insert(Devices::One(entry));
                return Ok(None);
            }
            dashmap::Entry::Occupied(o) => o.into_ref(),
        };
        let devices = &mut *slot;
        match devices {
            Devices::One(one) if one.device.device == entry.device.device => Ok(Some(std::mem::replace(one, entry))),
            Devices::One(one) => {
                *devices = Devices::Many(vec![one.clone(), entry]);
                Ok(None)
            }
            Devices::Many(entries) => Ok(match entries.iter().position(|e| e.device.device == entry.device.device) {
                Some(i) => Some(std::mem::replace(&mut entries[i], entry)),
                None => {
                    entries.push(entry);
                    None
                }
            }),
        }
    }

    async fn unregister(&self, device: &DeviceKey, epoch: u64) -> Result<bool> {
        let key = user_key(&device.tenant, &device.user);
        let mut removed = false;
        self.users.remove_if_mut(&key, |_, devices| {
            let mine = |e: &PresenceEntry| e.device.device == device.device && e.epoch == epoch;
            match devices {
                Devices::One(e) => {
                    removed = mine(e);
                    removed
                }
                Devices::Many(entries) => {
                    let before = entries.len();
                    entries.retain(|e| !mine(e));
                    removed = entries.len() < before;
                    if let [_] = entries.as_slice()
                        && let Some(last) = entries.pop()
                    {
                        *devices = Devices::One(last);
                    }
                    matches!(devices, Devices::Many(v) if v.is_empty())
                }
            }
        });
        Ok(removed)
    }

    async fn lookup(&self, tenant: &str, user: &str) -> Result<Vec<PresenceEntry>> {
        Ok(self.users.get(&user_key(tenant, user)).map(|d| d.as_slice().to_vec()).unwrap_or_default())
    }

    async fn record_online(&self, tenant: &str, user: &str, online: bool, now_ms: u64) -> Result<bool> {
        let mut slot = self.seen.entry(user_key(tenant, user)).or_insert(0);
        let was = *slot == ONLINE;
        if was != online {
            *slot = if online { ONLINE } else { now_ms };
        }
        Ok(was != online)
    }

    async fn last_seen(&self, tenant: &str, user: &str) -> Result<u64> {
        Ok(self.seen.get(&user_key(tenant, user)).map_or(0, |v| if *v == ONLINE { 0 } else { *v }))
    }
}

/// The recorded state of a user who is online.
const ONLINE: u64 = u64::MAX;
