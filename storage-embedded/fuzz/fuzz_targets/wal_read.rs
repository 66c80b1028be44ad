//! The write-ahead log's record reader on arbitrary bytes: it must never
//! panic, never read past the input, and what it accepts must be exactly
//! the records it reports. The input is read as it is, and also framed as
//! the body of one record with a correct length and checksum (random bytes
//! almost never pass the checksum, so the body's parser needs this to be
//! reached).
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage_embedded::wal;

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = Vec::with_capacity(data.len() + 8);
    framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    check(&framed);
});

fn check(data: &[u8]) {
    let scan = wal::read(data);
    assert!(scan.valid_len <= data.len());
    // Whatever was accepted reads back the same from the accepted prefix.
    let again = wal::read(&data[..scan.valid_len]);
    assert_eq!(again.records, scan.records);
    assert_eq!(again.valid_len, scan.valid_len);
    for pair in scan.records.windows(2) {
        assert_eq!(pair[1].lsn, pair[0].lsn + 1);
    }
}
