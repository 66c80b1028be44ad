//! Recovery of a log directory whose only segment holds valid records
//! followed by arbitrary bytes (a torn or damaged tail): it must replay
//! exactly the valid records, cut the rest, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage_embedded::wal;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile_dir() else { return };
    let path = dir.join("00000000000000000001.log");
    let mut bytes = Vec::new();
    // Three valid records first.
    {
        let mut log = wal::Wal::create(&dir, 1).expect("create");
        for i in 0..3u8 {
            let mut ops = wal::Ops::default();
            ops.push(wal::Op { table: wal::Table::Pending, key: &[i], value: Some(data.get(..4).unwrap_or(data)) });
            log.append(&ops, false).expect("append");
        }
    }
    bytes.extend(std::fs::read(&path).expect("read"));
    let valid = bytes.len();
    bytes.extend_from_slice(data);
    std::fs::write(&path, &bytes).expect("write");
    let mut seen = 0;
    let got = wal::recover(&dir, 0, |_| {
        seen += 1;
        Ok(())
    })
    .expect("a tail is never an error");
    assert!(seen >= 3);
    assert_eq!(got.records, seen);
    let left = std::fs::metadata(&path).expect("stat").len() as usize;
    assert!(left >= valid && left <= bytes.len());
    let _ = std::fs::remove_dir_all(&dir);
});

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("wal-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
