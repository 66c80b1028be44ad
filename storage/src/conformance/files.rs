//! Conformance of uploaded files.

use super::tenant;
use crate::Backends;
use crate::files::{FileMeta, Thumbnail, Variant};
use sha2::{Digest, Sha256};

fn meta(t: &str, bytes: &[u8], thumb: Option<&[u8]>) -> FileMeta {
    FileMeta {
        id: im_core::new_msg_id(),
        tenant: t.to_string(),
        uploader: "alice".into(),
        name: "照片 1.png".into(),
        content_type: "image/png".into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        width: 640,
        height: 480,
        thumbnail: thumb.map(|t| Thumbnail {
            content_type: "image/jpeg".into(),
            size: t.len() as u64,
            sha256: hex::encode(Sha256::digest(t)),
        }),
        created_ms: im_core::now_ms(),
    }
}

pub async fn files_store_read_ranges_and_refs(b: &Backends) {
    let t = tenant();
    // Larger than one GridFS chunk (255 KiB), not a multiple of it.
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let thumb = b"thumbnail bytes".to_vec();
    let m = meta(&t, &bytes, Some(&thumb));
    b.files.put_file(&m, bytes.clone(), Some(thumb.clone())).await.unwrap();
    assert_eq!(b.files.file_meta(&t, &m.id).await.unwrap().as_ref(), Some(&m));
    assert_eq!(b.files.file_meta(&tenant(), &m.id).await.unwrap(), None, "tenant wall");
    assert_eq!(b.files.file_meta(&t, "no-such-file").await.unwrap(), None);
    let all = b.files.read_file(&m, Variant::Original, 0, u64::MAX).await.unwrap().unwrap();
    assert!(all == bytes, "the whole file comes back");
    for (offset, len) in [(0, 10), (300_000, 5), (699_990, 100), (261_120, 261_120)] {
        let got = b.files.read_file(&m, Variant::Original, offset, len).await.unwrap().unwrap();
        let end = (offset + len).min(bytes.len() as u64) as usize;
        assert!(got == bytes[offset as usize..end], "range {offset}+{len}");
    }
    assert_eq!(b.files.read_file(&m, Variant::Thumbnail, 0, 100).await.unwrap(), Some(thumb));
    // The same bytes uploaded again (another id) share storage, not metadata.
    let again = FileMeta { uploader: "bob".into(), ..meta(&t, &bytes, None) };
    b.files.put_file(&again, bytes.clone(), None).await.unwrap();
    assert_eq!(b.files.file_meta(&t, &again.id).await.unwrap().unwrap().uploader, "bob");
    assert_eq!(b.files.read_file(&again, Variant::Thumbnail, 0, 10).await.unwrap(), None, "no thumbnail");
    assert_eq!(b.files.read_file(&again, Variant::Original, 0, 3).await.unwrap().unwrap(), bytes[..3].to_vec());
    // References: each conversation once.
    assert!(b.files.file_refs(&t, &m.id, 10).await.unwrap().is_empty());
    for conv in ["c1", "c2", "c1"] {
        b.files.add_file_ref(&t, &m.id, conv).await.unwrap();
    }
    let mut refs = b.files.file_refs(&t, &m.id, 10).await.unwrap();
    refs.sort();
    assert_eq!(refs, ["c1", "c2"]);
    assert!(b.files.file_refs(&tenant(), &m.id, 10).await.unwrap().is_empty(), "tenant wall");
    assert_eq!(b.files.file_refs(&t, &m.id, 1).await.unwrap().len(), 1, "bounded");
    // Old files, then deletion: the bytes another upload shares stay for it.
    let old = b.files.files_before(im_core::now_ms() + 1, 10_000).await.unwrap();
    assert!(old.contains(&(t.clone(), m.id.clone())) && old.contains(&(t.clone(), again.id.clone())));
    assert!(!b.files.files_before(m.created_ms, 10_000).await.unwrap().iter().any(|(tt, _)| tt == &t));
    assert!(b.files.delete_file(&t, &m.id).await.unwrap());
    assert!(!b.files.delete_file(&t, &m.id).await.unwrap(), "gone already");
    assert_eq!(b.files.file_meta(&t, &m.id).await.unwrap(), None);
    assert!(b.files.file_refs(&t, &m.id, 10).await.unwrap().is_empty());
    assert_eq!(b.files.read_file(&m, Variant::Thumbnail, 0, 100).await.unwrap(), None, "the thumbnail went");
    let shared = b.files.read_file(&again, Variant::Original, 0, u64::MAX).await.unwrap().unwrap();
    assert!(shared == bytes, "still there for the other upload");
    assert!(b.files.delete_file(&t, &again.id).await.unwrap());
    assert_eq!(b.files.read_file(&again, Variant::Original, 0, 10).await.unwrap(), None, "no one uses the bytes");
}
