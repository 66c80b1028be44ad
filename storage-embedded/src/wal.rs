//! The write-ahead log of the embedded store: what makes a batch durable.
//!
//! Each writer batch is one record holding the table writes the batch made
//! (puts and deletes, by table and key). The record is appended to the
//! current segment and, when the batch holds a message, synced with one
//! `fdatasync`; only then is the batch committed to redb, without a sync
//! of its own, and only then are callers answered. A checkpoint (a durable
//! redb commit that stores the last applied LSN) makes every earlier record
//! redundant: a new segment starts and the older ones are deleted.
//!
//! Recovery replays the records after the checkpoint's LSN. A record is
//! `len (u32 LE) | crc32 of body (u32 LE) | body`, body = `lsn (u64 LE) |
//! op count (u32 LE) | ops`, op = `table (u8) | kind (u8: 1 put, 0 delete) |
//! key len (u32 LE) | key | [value len (u32 LE) | value]`. Reading stops at
//! the first record that is not whole, fails its checksum, does not parse,
//! or does not carry the next LSN: what a crash in the middle of an append
//! leaves (a torn write). That tail is cut off; it was never acknowledged,
//! since acknowledging waits for the sync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::tables::{Op, Table};

/// The writes of one batch, encoded as the record body will hold them.
#[derive(Default)]
pub struct Ops {
    buf: Vec<u8>,
    count: u32,
}

impl Ops {
    pub fn push(&mut self, op: Op<'_>) {
        self.buf.push(op.table as u8);
        self.buf.push(u8::from(op.value.is_some()));
        self.buf.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(op.key);
        if let Some(v) = op.value {
            self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(v);
        }
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ops, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = Op<'_>> {
        let mut r = Cursor(&self.buf);
        std::iter::from_fn(move || op_at(&mut r))
    }

    /// Encoded bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

/// A record read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: u64,
    pub ops: Vec<Op<'a>>,
}

/// What [`read`] found in a segment.
#[derive(Debug)]
pub struct Scan<'a> {
    /// The whole, valid records, in order, their LSNs consecutive.
    pub records: Vec<Record<'a>>,
    /// Bytes they take from the start; anything after is a torn tail.
    pub valid_len: usize,
}

const HEADER: usize = 8;

/// Reads the records of one segment, stopping at the first that is not
/// whole and valid, or whose LSN does not follow the previous one. Never
/// panics and never allocates by a length read from `bytes`.
pub fn read(bytes: &[u8]) -> Scan<'_> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(record) = record_at(bytes, at) {
        let (record, next) = record;
        if let Some(prev) = records.last().map(|r: &Record<'_>| r.lsn)
            && Some(record.lsn) != prev.checked_add(1)
        {
            break;
        }
        records.push(record);
        at = next;
    }
    Scan { records, valid_len: at }
}

/// The record starting at `at` and where the next one starts.
fn record_at(bytes: &[u8], at: usize) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let start = at + HEADER;
    let body = bytes.get(start..start.checked_add(len)?)?;
    if len < 12 || crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Cursor(body);
    let lsn = r.u64()?;
    let count = r.u32()?;
    // Each op takes at least 6 bytes: a count beyond that is not believed.
    let mut ops = Vec::with_capacity((count as usize).min(body.len() / 6));
    for _ in 0..count {
        ops.push(op_at(&mut r)?);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some((Record { lsn, ops }, start + len))
}

/// The op at the cursor, as [`Ops::push`] encodes it.
fn op_at<'a>(r: &mut Cursor<'a>) -> Option<Op<'a>> {
    let table = Table::from_u8(r.u8()?)?;
    let kind = r.u8()?;
    let key = r.bytes()?;
    let value = match kind {
        1 => Some(r.bytes()?),
        0 => None,
        _ => return None,
    };
    Some(Op { table, key, value })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The segments of a log directory, oldest first: (first LSN, path).
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.log"))
}

/// Size after which the next record starts a new segment, so recovery
/// never holds more than about this much of the log in memory at once.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Appends records to the current segment.
pub struct Wal {
    dir: PathBuf,
    file: File,
    /// First LSN of the current segment (its name).
    current: u64,
    /// Bytes in the current segment.
    written: u64,
    /// See [`SEGMENT_BYTES`]; smaller in tests.
    pub segment_bytes: u64,
    /// LSN of the next record.
    next_lsn: u64,
    frame: Vec<u8>,
}

impl Wal {
    /// Starts a fresh segment in `dir` whose first record will have
    /// `next_lsn`, after any segments there (which the caller has replayed).
    pub fn create(dir: &Path, next_lsn: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = new_segment(dir, next_lsn)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            current: next_lsn,
            written: 0,
            segment_bytes: SEGMENT_BYTES,
            next_lsn,
            frame: Vec::new(),
        })
    }

    /// Appends `ops` as the next record; with `sync`, returns once it and
    /// everything appended before it is on disk.
    pub fn append(&mut self, ops: &Ops, sync: bool) -> std::io::Result<u64> {
        if self.written >= self.segment_bytes {
            self.start_segment()?;
        }
        let lsn = self.next_lsn;
        self.frame.clear();
        self.frame.extend_from_slice(&[0; HEADER]);
        self.frame.extend_from_slice(&lsn.to_le_bytes());
        self.frame.extend_from_slice(&ops.count.to_le_bytes());
        self.frame.extend_from_slice(&ops.buf);
        let body_len = self.frame.len() - HEADER;
        let len = u32::try_from(body_len).map_err(|_| std::io::Error::other("a batch too large for one record"))?;
        let crc = crc32fast::hash(&self.frame[HEADER..]);
        self.frame[..4].copy_from_slice(&len.to_le_bytes());
        self.frame[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&self.frame)?;
        self.written += self.frame.len() as u64;
        if sync {
            self.file.sync_data()?;
        }
        self.next_lsn += 1;
        // Keep a huge batch's buffer from staying allocated.
        if self.frame.capacity() > 4 << 20 {
            self.frame = Vec::new();
        }
        Ok(lsn)
    }

    /// After a checkpoint covering every record up to `covered`: starts a
    /// new segment (if the current one holds records) and deletes the
    /// segments whose records are all covered.
    pub fn rotate(&mut self, covered: u64) -> std::io::Result<()> {
        if self.next_lsn > self.current {
            self.start_segment()?;
        }
        let segments = segments(&self.dir)?;
        for pair in segments.windows(2) {
            // A segment ends where the next begins.
            if pair[1].0 <= covered.saturating_add(1) && pair[0].0 < self.current {
                std::fs::remove_file(&pair[0].1)?;
            }
        }
        Ok(())
    }
}

impl Wal {
    fn start_segment(&mut self) -> std::io::Result<()> {
        // Records appended without a sync must reach the disk before any
        // record of the next segment does: recovery takes a segment that
        // ends early and is followed by another for corruption.
        self.file.sync_data()?;
        self.file = new_segment(&self.dir, self.next_lsn)?;
        self.current = self.next_lsn;
        self.written = 0;
        Ok(())
    }
}

fn new_segment(dir: &Path, first_lsn: u64) -> std::io::Result<File> {
    let path = segment_path(dir, first_lsn);
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    file.sync_all()?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// What recovery found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The LSN of the last record replayed, or `applied` when none was.
    pub last_lsn: u64,
    pub records: u64,
    /// Bytes of torn tail cut off the last segment.
    pub torn_bytes: u64,
}

/// Replays, through `apply`, every record of the log in `dir` with an LSN
/// above `applied` (what the last checkpoint covers), and cuts off a torn
/// tail of the last segment. A bad record anywhere but at the end of the
/// last segment, or a gap in the LSNs, is corruption and an error.
pub fn recover(
    dir: &Path,
    applied: u64,
    mut apply: impl FnMut(&Record<'_>) -> Result<(), String>,
) -> Result<Recovered, String> {
    let segments = match segments(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Recovered { last_lsn: applied, ..Default::default() });
        }
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut out = Recovered { last_lsn: applied, ..Default::default() };
    // The LSN the next record must have, once one has been seen.
    let mut expect: Option<u64> = None;
    let count = segments.len();
    for (i, (first, path)) in segments.into_iter().enumerate() {
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let scan = read(&bytes);
        if let Some(r) = scan.records.first()
            && (r.lsn != first || expect.is_some_and(|e| e != first))
        {
            return Err(format!("{}: records out of sequence (first LSN {}, expected {first})", path.display(), r.lsn));
        }
        for record in &scan.records {
            if record.lsn > applied {
                apply(record)?;
                out.records += 1;
                out.last_lsn = record.lsn;
            }
            expect = Some(record.lsn + 1);
        }
        if scan.valid_len < bytes.len() {
            if i + 1 < count {
                return Err(format!(
                    "{}: a damaged record at byte {} of a segment that is not the last",
                    path.display(),
                    scan.valid_len
                ));
            }
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| e.to_string())?;
            file.set_len(scan.valid_len as u64).and_then(|()| file.sync_all()).map_err(|e| e.to_string())?;
            out.torn_bytes = (bytes.len() - scan.valid_len) as u64;
        }
    }
    if out.last_lsn < applied {
        out.last_lsn = applied;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ops(n: usize) -> Ops {
        let mut ops = Ops::default();
        for i in 0..n {
            let key = format!("key-{i}");
            let value = format!("值-{i}");
            ops.push(Op {
                table: Table::Pending,
                key: key.as_bytes(),
                value: (i % 3 != 0).then_some(value.as_bytes()),
            });
        }
        ops
    }

    #[test]
    fn appended_records_read_back_and_a_torn_tail_stops_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let mut ends = Vec::new();
        for n in 1..=5 {
            wal.append(&ops(n), n % 2 == 0).unwrap();
            ends.push(std::fs::metadata(segment_path(dir.path(), 1)).unwrap().len() as usize);
        }
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        let scan = read(&bytes);
        assert_eq!(scan.records.len(), 5);
        assert_eq!(scan.valid_len, bytes.len());
        assert_eq!(scan.records[2].lsn, 3);
        assert_eq!(scan.records[2].ops[1], Op { table: Table::Pending, key: b"key-1", value: Some("值-1".as_bytes()) });
        assert_eq!(scan.records[2].ops[0].value, None);
        for cut in 0..bytes.len() {
            let whole = ends.iter().filter(|e| **e <= cut).count();
            let scan = read(&bytes[..cut]);
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            let mut flipped = bytes.clone();
            flipped[cut] ^= 0x20;
            let scan = read(&flipped);
            let before = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(scan.records.len(), before, "byte {cut} flipped: the records before it, none after");
        }
    }

    #[test]
    fn ops_iterate_as_they_were_pushed_and_as_the_record_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        let ops = ops(7);
        let pushed: Vec<Op<'_>> = ops.iter().collect();
        assert_eq!(pushed.len(), 7);
        assert_eq!(pushed[1], Op { table: Table::Pending, key: b"key-1", value: Some("值-1".as_bytes()) });
        assert_eq!(pushed[3].value, None);
        wal.append(&ops, true).unwrap();
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(read(&bytes).records[0].ops, pushed);
    }

    #[test]
    fn full_segments_roll_over_and_recovery_reads_them_all_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.segment_bytes = 300;
        for n in 1..=40 {
            // Unsynced records too: rolling over syncs the segment it ends.
            assert_eq!(wal.append(&ops(n % 7 + 1), n % 3 == 0).unwrap(), n as u64);
        }
        let before = segments(dir.path()).unwrap();
        assert!(before.len() >= 5, "{} segments", before.len());
        for (first, path) in &before[..before.len() - 1] {
            let len = std::fs::metadata(path).unwrap().len();
            assert!((300..500).contains(&len), "segment {first}: {len} bytes");
        }
        let mut seen = Vec::new();
        let got = recover(dir.path(), 0, |r| {
            seen.push(r.lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
        assert_eq!(got.last_lsn, 40);
        // A checkpoint covering 25 deletes the segments that end by then.
        wal.rotate(25).unwrap();
        let left = segments(dir.path()).unwrap();
        assert!(left[0].0 <= 26 && left.len() < before.len(), "{left:?}");
        let mut seen = Vec::new();
        recover(dir.path(), 25, |r| {
            seen.push(r.lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (26..=40).collect::<Vec<u64>>());
    }

    #[test]
    fn recovery_replays_after_the_checkpoint_and_cuts_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        for n in 1..=3 {
            wal.append(&ops(n), true).unwrap();
        }
        wal.rotate(3).unwrap();
        for n in 4..=6 {
            wal.append(&ops(n), true).unwrap();
        }
        let path = segment_path(dir.path(), 4);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 3).unwrap();
        drop(file);
        let mut seen = Vec::new();
        let got = recover(dir.path(), 4, |r| {
            seen.push(r.lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![5], "4 is checkpointed, 6 is torn");
        assert_eq!(
            got,
            Recovered { last_lsn: 5, records: 1, torn_bytes: len - 3 - std::fs::metadata(&path).unwrap().len() }
        );
        // The cut is durable: a second recovery finds nothing torn.
        let again = recover(dir.path(), 4, |_| Ok(())).unwrap();
        assert_eq!(again.torn_bytes, 0);
        // Appending goes on at the next LSN in a new segment.
        let mut wal = Wal::create(dir.path(), 6).unwrap();
        assert_eq!(wal.append(&ops(1), true).unwrap(), 6);
        let all = recover(dir.path(), 4, |_| Ok(())).unwrap();
        assert_eq!(all.last_lsn, 6);
    }

    #[test]
    fn a_damaged_record_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), 1).unwrap();
        wal.append(&ops(2), true).unwrap();
        wal.append(&ops(2), true).unwrap();
        let first = segment_path(dir.path(), 1);
        // A later segment exists (as after a rotation whose deletes did not happen).
        let mut later = Wal::create(dir.path(), 3).unwrap();
        later.append(&ops(1), true).unwrap();
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        let e = recover(dir.path(), 0, |_| Ok(())).unwrap_err();
        assert!(e.contains("not the last"), "{e}");
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let scan = read(&bytes);
            prop_assert!(scan.valid_len <= bytes.len());
        }
    }
}
