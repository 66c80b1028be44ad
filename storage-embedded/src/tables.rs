//! The store's tables, declared once: each line of the [`tables!`]
//! invocation below gives a table's number in the write-ahead log, its redb
//! definition and its key and value types, and the macro makes from it
//! everything that must list every table: the [`Table`] enum the log
//! records, the definitions, creating them, applying a logged write
//! ([`Tables`]) and reading one by its encoded key ([`View`]). A table added
//! here is known everywhere at once.
//!
//! The log stores keys and values as bytes; [`Column`] converts them to the
//! table's own types (strings, byte strings, big-endian numbers). Tables are
//! never renumbered: the number is in every log record on disk.

use crate::errors::{corrupt, unavailable};
use redb::{ReadableTable, TableDefinition};
use storage::Result;

/// `applied_lsn` -> the last log record this state holds (see `crate::wal`).
/// Not a logged table: only checkpoints and recovery write it.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const APPLIED_LSN: &str = "applied_lsn";

/// A key or value type of a table, and its bytes in the log.
pub(crate) trait Column: redb::Value + 'static {
    /// Runs `f` on `bytes` read as this type.
    fn read<R, F: for<'a> FnOnce(Self::SelfType<'a>) -> R>(bytes: &[u8], f: F) -> Result<R>;
    /// A value's bytes as the log stores them.
    fn bytes(value: Self::SelfType<'_>) -> Vec<u8>;
}

impl Column for &'static [u8] {
    fn read<R, F: for<'a> FnOnce(Self::SelfType<'a>) -> R>(bytes: &[u8], f: F) -> Result<R> {
        Ok(f(bytes))
    }

    fn bytes(value: Self::SelfType<'_>) -> Vec<u8> {
        value.to_vec()
    }
}

impl Column for &'static str {
    fn read<R, F: for<'a> FnOnce(Self::SelfType<'a>) -> R>(bytes: &[u8], f: F) -> Result<R> {
        std::str::from_utf8(bytes).map(f).map_err(|_| corrupt("a logged key or value that is not UTF-8"))
    }

    fn bytes(value: Self::SelfType<'_>) -> Vec<u8> {
        value.as_bytes().to_vec()
    }
}

impl Column for u64 {
    fn read<R, F: for<'a> FnOnce(Self::SelfType<'a>) -> R>(bytes: &[u8], f: F) -> Result<R> {
        bytes.try_into().map(u64::from_be_bytes).map(f).map_err(|_| corrupt("a logged number that is not 8 bytes"))
    }

    fn bytes(value: Self::SelfType<'_>) -> Vec<u8> {
        value.to_be_bytes().to_vec()
    }
}

/// Writes `value` (`None`: deletes) at `key`; returns whether the key held a
/// value before.
fn put<K: Column + redb::Key, V: Column>(
    table: &mut redb::Table<'_, K, V>,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<bool> {
    let existed = K::read(key, |k| match value {
        Some(v) => V::read(v, |v| table.insert(k, v).map(|old| old.is_some())),
        None => Ok(table.remove(k).map(|old| old.is_some())),
    })??;
    existed.map_err(unavailable)
}

/// The value at `key`, as the log would store it.
fn get<K: Column + redb::Key, V: Column>(table: &impl ReadableTable<K, V>, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let found = K::read(key, |k| table.get(k).map(|v| v.map(|v| V::bytes(v.value()))))?;
    found.map_err(unavailable)
}

/// Every entry whose key starts with `prefix`, in key order.
fn scan<K: Column + redb::Key, V: Column>(
    table: &impl ReadableTable<K, V>,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    K::read(prefix, |start| -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in table.range(start..).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let k = K::bytes(k.value());
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k, V::bytes(v.value())));
        }
        Ok(out)
    })?
}

/// One write: `value` None is a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    pub table: Table,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

macro_rules! tables {
    ($( $(#[doc = $doc:literal])* $num:literal $variant:ident $field:ident $def:ident $name:literal: $k:ty => $v:ty; )*) => {
        /// The tables a log record can write to, by their number in it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Table {
            $( $variant = $num, )*
        }

        impl Table {
            /// Every table, in the order of their numbers.
            pub const ALL: [Table; [$($num),*].len()] = [$( Table::$variant ),*];

            pub(crate) fn from_u8(v: u8) -> Option<Self> {
                Self::ALL.get(usize::from(v).checked_sub(1)?).copied()
            }

            /// Its place in arrays of one entry per table.
            pub(crate) fn index(self) -> usize {
                self as usize - 1
            }
        }

        $( $(#[doc = $doc])* pub(crate) const $def: TableDefinition<$k, $v> = TableDefinition::new($name); )*

        /// Creates the tables that do not exist yet.
        pub(crate) fn create(db: &redb::Database) -> Result<()> {
            let txn = db.begin_write().map_err(unavailable)?;
            $( txn.open_table($def).map_err(unavailable)?; )*
            txn.open_table(META).map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        }

        /// The tables of one write transaction.
        pub(crate) struct Tables<'txn> {
            $( $field: redb::Table<'txn, $k, $v>, )*
        }

        impl<'txn> Tables<'txn> {
            pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
                Ok(Self { $( $field: txn.open_table($def).map_err(unavailable)?, )* })
            }

            /// Applies one logged write; returns whether the key held a
            /// value before.
            pub(crate) fn apply(&mut self, op: Op<'_>) -> Result<bool> {
                match op.table {
                    $( Table::$variant => put(&mut self.$field, op.key, op.value), )*
                }
            }
        }

        /// The tables of one snapshot, readable by logged keys.
        pub(crate) struct View {
            $( pub(crate) $field: redb::ReadOnlyTable<$k, $v>, )*
        }

        impl View {
            pub(crate) fn open(txn: &redb::ReadTransaction) -> Result<Self> {
                Ok(Self { $( $field: txn.open_table($def).map_err(unavailable)?, )* })
            }

            /// The value at `key` of table `t`.
            pub(crate) fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
                match t {
                    $( Table::$variant => get(&self.$field, key), )*
                }
            }

            /// The entries of table `t` under `prefix`, in key order.
            pub(crate) fn scan(&self, t: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                match t {
                    $( Table::$variant => scan(&self.$field, prefix), )*
                }
            }
        }
    };
}

tables! {
    /// (conversation, seq) -> protobuf `Message`, with the sender's ordinal
    /// (see `crate::records`).
    1 Messages messages MESSAGES "messages": &'static [u8] => &'static [u8];
    /// msg_id -> (conversation, seq).
    2 MsgIndex msg_index MSG_INDEX "msg_index": &'static str => &'static [u8];
    /// conversation -> (tenant, member a, member b). Written once, with seq
    /// 1; the last seq is the last key of the conversation in `messages`.
    3 Conversations conversations CONVERSATIONS "conversations": &'static str => &'static [u8];
    /// (tenant, sender, client_msg_id) -> msg_id.
    4 Idempotency idempotency IDEMPOTENCY "idempotency": &'static [u8] => &'static str;
    /// (tenant, user, device, conversation, seq) -> msg_id. Device "" holds
    /// the messages of a user who has no device yet.
    5 Pending pending PENDING "pending": &'static [u8] => &'static str;
    /// (tenant, user, device) -> last seen, ms since the epoch.
    6 Devices devices DEVICES "devices": &'static [u8] => u64;
    /// Records of customer service, files, revocations and settings: (kind,
    /// tenant, id) -> JSON or bytes.
    7 Cs cs CS "cs": &'static [u8] => &'static [u8];
    /// (tenant, user, last activity ms, conversation) -> empty: each user's
    /// conversations by their last message, for the conversation list.
    8 UserConvs user_convs USER_CONVS "user_convs": &'static [u8] => &'static [u8];
    /// (conversation, user) -> `ReadState`.
    9 Reads reads READS "reads": &'static [u8] => &'static [u8];
    /// (tenant, user, device, event key) -> version (8 bytes) and the
    /// encoded event `Frame`: receipts and recalls pending for a device.
    10 Events events EVENTS "events": &'static [u8] => &'static [u8];
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    #[test]
    fn every_table_round_trips_a_logged_write_and_keeps_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        create(&db).unwrap();
        let numbers: Vec<u8> = Table::ALL.iter().map(|t| *t as u8).collect();
        assert_eq!(numbers, (1..=10).collect::<Vec<u8>>(), "numbers are in the log on disk: never change them");
        let value_of = |t: Table| if t == Table::Devices { 7u64.to_be_bytes().to_vec() } else { b"v".to_vec() };
        let txn = db.begin_write().unwrap();
        {
            let mut tables = Tables::open(&txn).unwrap();
            for t in Table::ALL {
                assert_eq!(Table::from_u8(t as u8), Some(t));
                let value = value_of(t);
                let op = Op { table: t, key: b"k-1", value: Some(&value) };
                assert!(!tables.apply(op).unwrap(), "{t:?}: new");
                assert!(tables.apply(op).unwrap(), "{t:?}: replaced");
                tables.apply(Op { table: t, key: b"k-2", value: Some(&value) }).unwrap();
                tables.apply(Op { table: t, key: b"l-1", value: Some(&value) }).unwrap();
            }
        }
        txn.commit().unwrap();
        let view = View::open(&db.begin_read().unwrap()).unwrap();
        for t in Table::ALL {
            assert_eq!(view.get(t, b"k-1").unwrap(), Some(value_of(t)), "{t:?}");
            let keys: Vec<Vec<u8>> = view.scan(t, b"k-").unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, [b"k-1".to_vec(), b"k-2".to_vec()], "{t:?}");
        }
        assert!(Table::from_u8(0).is_none() && Table::from_u8(11).is_none());
        let txn = db.begin_write().unwrap();
        let mut tables = Tables::open(&txn).unwrap();
        let bad = Op { table: Table::Devices, key: b"k-1", value: Some(b"short") };
        assert!(tables.apply(bad).is_err(), "a device record is 8 bytes");
        let bad = Op { table: Table::MsgIndex, key: &[0xff, 0xfe], value: Some(b"v") };
        assert!(tables.apply(bad).is_err(), "msg ids are text");
    }
}
