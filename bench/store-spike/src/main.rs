//! Write-path spike for the embedded store (issue 13): the same per-message
//! work the writer does today (idempotency lookup, last seq, devices, four
//! inserts; an ack = an index lookup and a pending delete), in group-commit
//! batches, on four designs:
//!
//! - `redb`: today's design, one durable redb commit per batch;
//! - `wal`: one fdatasync'd log append per batch, the same redb writes in a
//!   non-durable commit after it, a durable redb checkpoint every second that
//!   lets the log be truncated;
//! - `wal2`: the same log, with redb written by a second thread in large
//!   non-durable transactions (its own checkpoint each second);
//! - `fjall`: an LSM (journal + memtables + background flush/compaction), one
//!   atomic write batch per group commit persisted with `PersistMode::SyncData`.
//!
//! Reports messages/s of one writer thread and CPU (user + sys of the whole
//! process, background threads included) per message.
//!
//! Usage: store-spike <redb|wal|wal2|fjall> [messages] [batch] [conversations]
//! With `SPIKE_CACHE=1` the writer keeps each conversation's last seq and
//! skips the device scan (as the product's writer can); data goes to
//! `$SPIKE_DIR` (default /tmp/spike-data).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

struct Msg {
    conv: String,
    from: String,
    to: String,
    cmid: String,
    body: Vec<u8>,
}

trait Engine {
    /// Appends `msgs` and removes the pending marks in `acks` (msg ids of
    /// earlier messages, with their recipient), durably, in one group commit.
    fn batch(&mut self, msgs: &[Msg], acks: &[(String, String)]) -> Vec<String>;
    fn finish(&mut self) {}
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::new();
    for p in parts {
        k.extend_from_slice(p);
        k.push(0);
    }
    k
}

fn mkey(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = key(&[conv.as_bytes()]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn pkey(user: &str, conv: &str, seq: u64) -> Vec<u8> {
    let mut k = key(&[b"t", user.as_bytes(), b"d1", conv.as_bytes()]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn cache() -> bool {
    std::env::var_os("SPIKE_CACHE").is_some()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

mod redb_engine {
    use super::*;
    use redb::{Database, Durability, ReadableTable, TableDefinition};

    pub const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
    pub const MSG_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("msg_index");
    pub const IDEM: TableDefinition<&[u8], &str> = TableDefinition::new("idempotency");
    pub const PENDING: TableDefinition<&[u8], &str> = TableDefinition::new("pending");
    pub const DEVICES: TableDefinition<&[u8], u64> = TableDefinition::new("devices");

    pub struct Redb {
        pub seqs: HashMap<String, u64>,
        pub db: Database,
        pub wal: Option<Wal>,
    }

    pub struct Wal {
        file: File,
        dir: std::path::PathBuf,
        buf: Vec<u8>,
        last_checkpoint: Instant,
        pub checkpoints: u32,
    }

    impl Redb {
        pub fn open(dir: &Path, wal: bool) -> Self {
            let db = Database::builder().set_cache_size(64 << 20).create(dir.join("db.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(MESSAGES).unwrap();
                txn.open_table(MSG_INDEX).unwrap();
                txn.open_table(IDEM).unwrap();
                txn.open_table(PENDING).unwrap();
                let mut d = txn.open_table(DEVICES).unwrap();
                for u in 0..1000 {
                    d.insert(key(&[b"t", format!("u{u}").as_bytes(), b"d1"]).as_slice(), 1).unwrap();
                }
            }
            txn.commit().unwrap();
            let wal = wal.then(|| Wal {
                file: File::create(dir.join("wal.0")).unwrap(),
                dir: dir.to_path_buf(),
                buf: Vec::with_capacity(1 << 20),
                last_checkpoint: Instant::now(),
                checkpoints: 0,
            });
            Self { seqs: HashMap::new(), db, wal }
        }
    }

    fn record(buf: &mut Vec<u8>, table: u8, k: &[u8], v: Option<&[u8]>) {
        let start = buf.len();
        buf.extend_from_slice(&[0; 8]);
        buf.push(table);
        buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
        buf.extend_from_slice(k);
        if let Some(v) = v {
            buf.extend_from_slice(v);
        }
        let len = (buf.len() - start - 8) as u32;
        let crc = crc32fast::hash(&buf[start + 8..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    impl Engine for Redb {
        fn batch(&mut self, msgs: &[Msg], acks: &[(String, String)]) -> Vec<String> {
            let mut txn = self.db.begin_write().unwrap();
            let durability = if self.wal.is_some() { Durability::None } else { Durability::Immediate };
            txn.set_durability(durability).unwrap();
            let mut ids = Vec::with_capacity(msgs.len());
            let mut log = self.wal.as_mut().map(|w| std::mem::take(&mut w.buf));
            {
                let mut messages = txn.open_table(MESSAGES).unwrap();
                let mut index = txn.open_table(MSG_INDEX).unwrap();
                let mut idem = txn.open_table(IDEM).unwrap();
                let mut pending = txn.open_table(PENDING).unwrap();
                let devices = txn.open_table(DEVICES).unwrap();
                for m in msgs {
                    let ik = key(&[b"t", m.from.as_bytes(), m.cmid.as_bytes()]);
                    assert!(idem.get(ik.as_slice()).unwrap().is_none());
                    let lo = mkey(&m.conv, 0);
                    let hi = mkey(&m.conv, u64::MAX);
                    let cached = cache().then(|| self.seqs.get(&m.conv).copied()).flatten();
                    let seq = if let Some(s) = cached { s + 1 } else { match messages.range(lo.as_slice()..=hi.as_slice()).unwrap().next_back() {
                        Some(item) => {
                            let (k, _) = item.unwrap();
                            let k = k.value();
                            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()) + 1
                        }
                        None => 1,
                    }};
                    if cache() { self.seqs.insert(m.conv.clone(), seq); }
                    let prefix = key(&[b"t", m.to.as_bytes()]);
                    if !cache() {
                    let n = devices.range(prefix.as_slice()..).unwrap().take_while(|i| {
                        i.as_ref().map(|(k, _)| k.value().starts_with(&prefix)).unwrap_or(false)
                    });
                    assert_eq!(n.count(), 1);
                    }
                    let id = new_id();
                    let mk = mkey(&m.conv, seq);
                    messages.insert(mk.as_slice(), m.body.as_slice()).unwrap();
                    index.insert(id.as_str(), mk.as_slice()).unwrap();
                    idem.insert(ik.as_slice(), id.as_str()).unwrap();
                    let pk = pkey(&m.to, &m.conv, seq);
                    pending.insert(pk.as_slice(), id.as_str()).unwrap();
                    if let Some(buf) = log.as_mut() {
                        record(buf, 0, &mk, Some(&m.body));
                        record(buf, 1, id.as_bytes(), Some(&mk));
                        record(buf, 2, &ik, Some(id.as_bytes()));
                        record(buf, 3, &pk, Some(id.as_bytes()));
                    }
                    ids.push(id);
                }
                for (id, user) in acks {
                    let pos = index.get(id.as_str()).unwrap().unwrap().value().to_vec();
                    let conv = std::str::from_utf8(&pos[..pos.len() - 9]).unwrap();
                    let seq = u64::from_be_bytes(pos[pos.len() - 8..].try_into().unwrap());
                    let pk = pkey(user, conv, seq);
                    assert!(pending.remove(pk.as_slice()).unwrap().is_some());
                    if let Some(buf) = log.as_mut() {
                        record(buf, 3, &pk, None);
                    }
                }
            }
            if let (Some(wal), Some(mut buf)) = (self.wal.as_mut(), log) {
                // Durable first, visible after.
                wal.file.write_all(&buf).unwrap();
                wal.file.sync_data().unwrap();
                buf.clear();
                wal.buf = buf;
            }
            txn.commit().unwrap();
            if let Some(wal) = self.wal.as_mut()
                && wal.last_checkpoint.elapsed() >= Duration::from_secs(1)
            {
                let mut txn = self.db.begin_write().unwrap();
                txn.set_durability(Durability::Immediate).unwrap();
                txn.commit().unwrap();
                wal.checkpoints += 1;
                wal.file = File::create(wal.dir.join(format!("wal.{}", wal.checkpoints))).unwrap();
                std::fs::remove_file(wal.dir.join(format!("wal.{}", wal.checkpoints - 1))).unwrap();
                wal.last_checkpoint = Instant::now();
            }
            ids
        }
    }
}

mod wal2_engine {
    //! Log first, index in the background: the writer appends one
    //! checksummed record per batch and syncs it; another thread applies
    //! the same writes to redb in large non-durable transactions and makes
    //! them durable once a second (a checkpoint, after which the log could
    //! be truncated).
    use super::*;
    use super::redb_engine::{MESSAGES, MSG_INDEX, IDEM, PENDING};
    use redb::{Database, Durability, ReadableDatabase};
    use std::sync::{Arc, mpsc};

    type Writes = Vec<(u8, Vec<u8>, Option<Vec<u8>>)>;

    pub struct Wal2 {
        db: Arc<Database>,
        file: File,
        buf: Vec<u8>,
        seqs: HashMap<String, u64>,
        index: HashMap<String, Vec<u8>>,
        tx: Option<mpsc::SyncSender<Writes>>,
        applier: Option<std::thread::JoinHandle<()>>,
    }

    impl Wal2 {
        pub fn open(dir: &Path) -> Self {
            let r = super::redb_engine::Redb::open(dir, false);
            let db = Arc::new(r.db);
            let (tx, rx) = mpsc::sync_channel::<Writes>(64);
            let adb = db.clone();
            let applier = std::thread::spawn(move || {
                let mut last = Instant::now();
                while let Ok(first) = rx.recv() {
                    let mut all = vec![first];
                    while all.len() < 64 { match rx.try_recv() { Ok(w) => all.push(w), Err(_) => break } }
                    let mut txn = adb.begin_write().unwrap();
                    let durable = last.elapsed() >= Duration::from_secs(1);
                    txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).unwrap();
                    {
                        let mut m = txn.open_table(MESSAGES).unwrap();
                        let mut i = txn.open_table(MSG_INDEX).unwrap();
                        let mut d = txn.open_table(IDEM).unwrap();
                        let mut p = txn.open_table(PENDING).unwrap();
                        for w in all { for (t, k, v) in w {
                            match (t, v) {
                                (0, Some(v)) => { m.insert(k.as_slice(), v.as_slice()).unwrap(); }
                                (1, Some(v)) => { i.insert(std::str::from_utf8(&k).unwrap(), v.as_slice()).unwrap(); }
                                (2, Some(v)) => { d.insert(k.as_slice(), std::str::from_utf8(&v).unwrap()).unwrap(); }
                                (3, Some(v)) => { p.insert(k.as_slice(), std::str::from_utf8(&v).unwrap()).unwrap(); }
                                (3, None) => { p.remove(k.as_slice()).unwrap(); }
                                _ => unreachable!(),
                            }
                        }}
                    }
                    txn.commit().unwrap();
                    if durable { last = Instant::now(); }
                }
            });
            Self { db, file: File::create(dir.join("wal2.0")).unwrap(), buf: Vec::new(), seqs: HashMap::new(), index: HashMap::new(), tx: Some(tx), applier: Some(applier) }
        }
    }

    fn record(buf: &mut Vec<u8>, t: u8, k: &[u8], v: Option<&[u8]>) {
        buf.push(t);
        buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
        buf.extend_from_slice(k);
        if let Some(v) = v { buf.extend_from_slice(&(v.len() as u32).to_le_bytes()); buf.extend_from_slice(v); }
    }

    impl Engine for Wal2 {
        fn batch(&mut self, msgs: &[Msg], acks: &[(String, String)]) -> Vec<String> {
            let mut writes: Writes = Vec::with_capacity(msgs.len() * 4 + acks.len());
            let mut ids = Vec::new();
            let rtxn = self.db.begin_read().unwrap();
            let idem = rtxn.open_table(IDEM).unwrap();
            for m in msgs {
                let ik = key(&[b"t", m.from.as_bytes(), m.cmid.as_bytes()]);
                assert!(idem.get(ik.as_slice()).unwrap().is_none());
                let seq = self.seqs.get(&m.conv).copied().unwrap_or(0) + 1;
                self.seqs.insert(m.conv.clone(), seq);
                let id = new_id();
                let mk = mkey(&m.conv, seq);
                writes.push((0, mk.clone(), Some(m.body.clone())));
                writes.push((1, id.clone().into_bytes(), Some(mk.clone())));
                writes.push((2, ik, Some(id.clone().into_bytes())));
                writes.push((3, pkey(&m.to, &m.conv, seq), Some(id.clone().into_bytes())));
                self.index.insert(id.clone(), mk);
                ids.push(id);
            }
            for (id, user) in acks {
                let pos = self.index.remove(id).unwrap();
                let conv = std::str::from_utf8(&pos[..pos.len() - 9]).unwrap();
                let seq = u64::from_be_bytes(pos[pos.len() - 8..].try_into().unwrap());
                writes.push((3, pkey(user, conv, seq), None));
            }
            self.buf.clear();
            self.buf.extend_from_slice(&[0; 8]);
            for (t, k, v) in &writes { record(&mut self.buf, *t, k, v.as_deref()); }
            let len = (self.buf.len() - 8) as u32;
            let crc = crc32fast::hash(&self.buf[8..]);
            self.buf[..4].copy_from_slice(&len.to_le_bytes());
            self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
            self.file.write_all(&self.buf).unwrap();
            self.file.sync_data().unwrap();
            self.tx.as_ref().unwrap().send(writes).unwrap();
            ids
        }
        fn finish(&mut self) {
            drop(self.tx.take());
            self.applier.take().unwrap().join().unwrap();
        }
    }
}

mod fjall_engine {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct Fjall {
        seqs: HashMap<String, u64>,
        db: Database,
        messages: Keyspace,
        index: Keyspace,
        idem: Keyspace,
        pending: Keyspace,
        devices: Keyspace,
    }

    impl Fjall {
        pub fn open(dir: &Path) -> Self {
            let db = Database::builder(dir.join("fjall")).open().unwrap();
            let ks = |n: &str| db.keyspace(n, KeyspaceCreateOptions::default).unwrap();
            let (messages, index, idem, pending, devices) =
                (ks("messages"), ks("msg_index"), ks("idempotency"), ks("pending"), ks("devices"));
            for u in 0..1000 {
                devices.insert(key(&[b"t", format!("u{u}").as_bytes(), b"d1"]), 1u64.to_be_bytes()).unwrap();
            }
            db.persist(PersistMode::SyncData).unwrap();
            Self { seqs: HashMap::new(), db, messages, index, idem, pending, devices }
        }
    }

    impl Engine for Fjall {
        fn batch(&mut self, msgs: &[Msg], acks: &[(String, String)]) -> Vec<String> {
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            let mut ids = Vec::with_capacity(msgs.len());
            // The batch is not readable before it commits: seqs allocated in
            // this batch are tracked beside it.
            let mut batch_seq: HashMap<&str, u64> = HashMap::new();
            for m in msgs {
                let ik = key(&[b"t", m.from.as_bytes(), m.cmid.as_bytes()]);
                assert!(self.idem.get(&ik).unwrap().is_none());
                let seq = match batch_seq.get(m.conv.as_str()).or(if cache() { self.seqs.get(&m.conv) } else { None }) {
                    Some(s) => s + 1,
                    None => match self.messages.prefix(key(&[m.conv.as_bytes()])).next_back() {
                        Some(item) => {
                            let k = item.key().unwrap();
                            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()) + 1
                        }
                        None => 1,
                    },
                };
                batch_seq.insert(&m.conv, seq);
                if cache() { self.seqs.insert(m.conv.clone(), seq); } else {
                let n = self.devices.prefix(key(&[b"t", m.to.as_bytes()])).count();
                assert_eq!(n, 1);
                }
                let id = new_id();
                let mk = mkey(&m.conv, seq);
                batch.insert(&self.messages, mk.clone(), m.body.clone());
                batch.insert(&self.index, id.clone(), mk);
                batch.insert(&self.idem, ik, id.clone());
                batch.insert(&self.pending, pkey(&m.to, &m.conv, seq), id.clone());
                ids.push(id);
            }
            for (id, user) in acks {
                let pos = self.index.get(id).unwrap().unwrap();
                let conv = std::str::from_utf8(&pos[..pos.len() - 9]).unwrap();
                let seq = u64::from_be_bytes(pos[pos.len() - 8..].try_into().unwrap());
                batch.remove(&self.pending, pkey(user, conv, seq));
            }
            batch.commit().unwrap();
            ids
        }
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let design = args.get(1).map(String::as_str).unwrap_or("redb");
    let total: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let convs: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(100);
    let dir = std::env::var("SPIKE_DIR").unwrap_or_else(|_| "/tmp/spike-data".into());
    let dir = Path::new(&dir).join(design);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine: Box<dyn Engine> = match design {
        "redb" => Box::new(redb_engine::Redb::open(&dir, false)),
        "wal" => Box::new(redb_engine::Redb::open(&dir, true)),
        "fjall" => Box::new(fjall_engine::Fjall::open(&dir)),
        "wal2" => Box::new(wal2_engine::Wal2::open(&dir)),
        other => panic!("unknown design {other}"),
    };
    let body = vec![b'x'; 160];
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut unacked: Vec<(String, String)> = Vec::new();
    let mut sent = 0;
    let mut batch_times = Vec::new();
    while sent < total {
        let msgs: Vec<Msg> = (sent..(sent + batch).min(total))
            .map(|i| {
                let c = i % convs;
                let (a, b) = (format!("u{}", 2 * c), format!("u{}", 2 * c + 1));
                let (from, to) = if (i / convs) % 2 == 0 { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
                Msg { conv: format!("t:{a}:{b}"), from, to, cmid: format!("c{i}"), body: body.clone() }
            })
            .collect();
        // Acks of the previous batch ride with this one, as with real clients.
        let acks = std::mem::take(&mut unacked);
        let bt = Instant::now();
        let ids = engine.batch(&msgs, &acks);
        batch_times.push(bt.elapsed());
        unacked = ids.into_iter().zip(msgs.iter().map(|m| m.to.clone())).collect();
        sent += msgs.len();
    }
    engine.batch(&[], &std::mem::take(&mut unacked));
    engine.finish();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    batch_times.sort();
    let p = |q: f64| batch_times[((batch_times.len() as f64 * q) as usize).min(batch_times.len() - 1)];
    let disk: u64 = walk(&dir);
    println!(
        "{design:5} batch {batch:4} convs {convs:5}: {:7.0} msg/s  cpu {:5.1} us/msg  batch p50 {:?} p99 {:?}  disk {} MiB",
        total as f64 / wall,
        cpu * 1e6 / total as f64,
        p(0.5),
        p(0.99),
        disk >> 20
    );
}

fn walk(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
    }
    n
}
