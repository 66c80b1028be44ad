use crate::errors::unavailable;
use crate::keys::{Key, Reader};
use crate::store::EmbeddedStore;
use crate::tables::CS;
use async_trait::async_trait;
use redb::ReadableDatabase;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use storage::files::*;
use storage::{Result, StorageError};

fn meta_key(tenant: &str, id: &str) -> Vec<u8> {
    Key::new().s("f").s(tenant).s(id).into_vec()
}

fn ref_prefix(tenant: &str, id: &str) -> Vec<u8> {
    Key::new().s("fr").s(tenant).s(id).into_vec()
}

/// Which uploads use the bytes with this hash: ("fb", sha, tenant, id).
fn blob_user(sha: &str, tenant: &str, id: &str) -> Vec<u8> {
    Key::new().s("fb").s(sha).s(tenant).s(id).into_vec()
}

fn shas(meta: &FileMeta) -> Vec<String> {
    std::iter::once(meta.sha256.clone()).chain(meta.thumbnail.as_ref().map(|t| t.sha256.clone())).collect()
}

/// The keys of `table` CS records under `prefix`.
fn keys_under(db: &redb::Database, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
    let txn = db.begin_read().map_err(unavailable)?;
    let table = txn.open_table(CS).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in table.range(prefix..).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(k.value().to_vec());
    }
    Ok(out)
}

/// Where the bytes with this hash live.
pub(super) fn blob_path(root: &Path, sha256: &str) -> PathBuf {
    root.join("files").join(sha256.get(..2).unwrap_or("00")).join(sha256)
}

/// Writes `bytes` under their hash unless they are there: a temporary
/// file, synced, renamed, and the directory synced.
fn write_blob(root: &Path, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = blob_path(root, sha256);
    if path.exists() {
        return Ok(());
    }
    let tmp_dir = root.join("files").join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    let dir = path.parent().unwrap_or(root);
    std::fs::create_dir_all(dir)?;
    let tmp = tmp_dir.join(format!("{}.part", im_core::new_msg_id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn read_blob(path: &Path, offset: u64, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::with_capacity(len.min(16 << 20) as usize);
    f.take(len).read_to_end(&mut out)?;
    Ok(Some(out))
}

impl EmbeddedStore {
    fn data_dir(&self) -> PathBuf {
        self.path().parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

#[async_trait]
impl FileStore for EmbeddedStore {
    async fn put_file(&self, meta: &FileMeta, bytes: Vec<u8>, thumbnail: Option<Vec<u8>>) -> Result<()> {
        let _one = self.files_lock().lock().await;
        let root = self.data_dir();
        let (sha, thumb_sha) = (meta.sha256.clone(), meta.thumbnail.as_ref().map(|t| t.sha256.clone()));
        tokio::task::spawn_blocking(move || {
            write_blob(&root, &sha, &bytes)?;
            if let (Some(t), Some(s)) = (thumbnail, thumb_sha) {
                write_blob(&root, &s, &t)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| StorageError::Unavailable(format!("cannot write the file: {e}")))?;
        let record = serde_json::to_vec(meta).map_err(unavailable)?;
        let mut records = vec![(meta_key(&meta.tenant, &meta.id), Some(record))];
        records.extend(shas(meta).iter().map(|sha| (blob_user(sha, &meta.tenant, &meta.id), Some(Vec::new()))));
        let written = self.queue_records(records).await?;
        written.await.map_err(|_| unavailable("the store writer stopped"))?
    }

    async fn file_meta(&self, tenant: &str, id: &str) -> Result<Option<FileMeta>> {
        let k = meta_key(tenant, id);
        self.read_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(CS).map_err(unavailable)?;
            let Some(v) = table.get(k.as_slice()).map_err(unavailable)? else { return Ok(None) };
            serde_json::from_slice(v.value()).map(Some).map_err(|e| StorageError::Corrupt(format!("file record: {e}")))
        })
        .await
    }

    async fn read_file(&self, meta: &FileMeta, variant: Variant, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let sha = match variant {
            Variant::Original => meta.sha256.clone(),
            Variant::Thumbnail => match &meta.thumbnail {
                Some(t) => t.sha256.clone(),
                None => return Ok(None),
            },
        };
        let path = blob_path(&self.data_dir(), &sha);
        tokio::task::spawn_blocking(move || read_blob(&path, offset, len))
            .await
            .map_err(unavailable)?
            .map_err(|e| StorageError::Unavailable(format!("cannot read the file: {e}")))
    }

    async fn add_file_ref(&self, tenant: &str, id: &str, conversation_id: &str) -> Result<()> {
        let mut k = ref_prefix(tenant, id);
        k.extend(Key::new().s(conversation_id).into_vec());
        let written = self.queue_records(vec![(k, Some(Vec::new()))]).await?;
        written.await.map_err(|_| unavailable("the store writer stopped"))?
    }

    async fn file_refs(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<String>> {
        let prefix = ref_prefix(tenant, id);
        self.read_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(CS).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in table.range(prefix.as_slice()..).map_err(unavailable)?.take(limit) {
                let (k, _) = item.map_err(unavailable)?;
                let Some(rest) = k.value().strip_prefix(prefix.as_slice()) else { break };
                let conv = Reader::new(rest).s().ok_or_else(|| StorageError::Corrupt("file reference".into()))?;
                out.push(conv.to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool> {
        let _one = self.files_lock().lock().await;
        let Some(meta) = self.file_meta(tenant, id).await? else { return Ok(false) };
        let refs = ref_prefix(tenant, id);
        let mut gone = self.read_db(move |db| keys_under(db, &refs)).await?;
        gone.push(meta_key(tenant, id));
        gone.extend(shas(&meta).iter().map(|sha| blob_user(sha, tenant, id)));
        let written = self.queue_records(gone.into_iter().map(|k| (k, None)).collect()).await?;
        written.await.map_err(|_| unavailable("the store writer stopped"))??;
        // Bytes nobody else uploaded go too.
        for sha in shas(&meta) {
            let prefix = Key::new().s("fb").s(&sha).into_vec();
            if self.read_db(move |db| keys_under(db, &prefix)).await?.is_empty() {
                let path = blob_path(&self.data_dir(), &sha);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete a file's bytes");
                }
            }
        }
        Ok(true)
    }

    async fn files_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(String, String)>> {
        let prefix = Key::new().s("f").into_vec();
        self.read_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(CS).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in table.range(prefix.as_slice()..).map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                if !k.value().starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                let meta: FileMeta = serde_json::from_slice(v.value())
                    .map_err(|e| StorageError::Corrupt(format!("file record: {e}")))?;
                if meta.created_ms < before_ms {
                    out.push((meta.tenant, meta.id));
                }
            }
            Ok(out)
        })
        .await
    }
}
