use super::{ClusterStore, unavailable};
use async_trait::async_trait;
use futures_util::{AsyncReadExt, AsyncWriteExt};
use mongodb::bson::{Bson, doc};
use storage::files::*;
use storage::{Result, StorageError};

fn mongo_err(e: mongodb::error::Error) -> StorageError {
    metrics::counter!("dongdong_mongo_errors_total").increment(1);
    StorageError::Unavailable(format!("MongoDB: {e}"))
}

fn thumb_id(id: &str) -> String {
    format!("{id}.thumbnail")
}

#[async_trait]
impl FileStore for ClusterStore {
    async fn put_file(&self, meta: &FileMeta, bytes: Vec<u8>, thumbnail: Option<Vec<u8>>) -> Result<()> {
        let bucket = self.files();
        let record = mongodb::bson::to_document(meta).map_err(unavailable)?;
        // The thumbnail first: a file document names only what exists.
        for (id, data, metadata) in
            [(thumb_id(&meta.id), thumbnail, None), (meta.id.clone(), Some(bytes), Some(record))]
        {
            let Some(data) = data else { continue };
            let mut upload = bucket.open_upload_stream(&meta.name).id(Bson::String(id));
            if let Some(m) = metadata {
                upload = upload.metadata(m);
            }
            let mut stream = upload.await.map_err(mongo_err)?;
            if let Err(e) = stream.write_all(&data).await {
                let _ = stream.abort().await;
                return Err(StorageError::Unavailable(format!("GridFS upload: {e}")));
            }
            stream.close().await.map_err(|e| StorageError::Unavailable(format!("GridFS upload: {e}")))?;
        }
        Ok(())
    }

    async fn file_meta(&self, tenant: &str, id: &str) -> Result<Option<FileMeta>> {
        let found = self.files().find(doc! { "_id": id, "metadata.tenant": tenant }).await.map_err(mongo_err)?;
        use futures_util::TryStreamExt;
        let docs: Vec<mongodb::gridfs::FilesCollectionDocument> = found.try_collect().await.map_err(mongo_err)?;
        let Some(m) = docs.into_iter().next().and_then(|d| d.metadata) else { return Ok(None) };
        mongodb::bson::from_document(m).map(Some).map_err(|e| StorageError::Corrupt(format!("file document: {e}")))
    }

    async fn read_file(&self, meta: &FileMeta, variant: Variant, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let id = match variant {
            Variant::Original => meta.id.clone(),
            Variant::Thumbnail if meta.thumbnail.is_some() => thumb_id(&meta.id),
            Variant::Thumbnail => return Ok(None),
        };
        let mut stream = match self.files().open_download_stream(Bson::String(id)).await {
            Ok(s) => s,
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::GridFs(_)) => return Ok(None),
            Err(e) => return Err(mongo_err(e)),
        };
        // Chunks before `offset` are read and dropped: GridFS streams
        // from the start (files are at most files.max_bytes).
        let mut skip = vec![0u8; 64 << 10];
        let mut left = offset;
        while left > 0 {
            let n = stream.read(&mut skip[..left.min(64 << 10) as usize]).await.map_err(unavailable)?;
            if n == 0 {
                return Ok(Some(Vec::new()));
            }
            left -= n as u64;
        }
        let mut out = Vec::new();
        (&mut stream).take(len).read_to_end(&mut out).await.map_err(unavailable)?;
        Ok(Some(out))
    }

    async fn add_file_ref(&self, tenant: &str, id: &str, conversation_id: &str) -> Result<()> {
        self.file_refs_collection()
            .update_one(
                doc! { "_id": format!("{tenant}\u{0}{id}") },
                doc! { "$addToSet": { "convs": conversation_id } },
            )
            .upsert(true)
            .await
            .map_err(mongo_err)?;
        Ok(())
    }

    async fn file_refs(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<String>> {
        let found = self
            .file_refs_collection()
            .find_one(doc! { "_id": format!("{tenant}\u{0}{id}") })
            .await
            .map_err(mongo_err)?;
        let convs = found.as_ref().and_then(|d| d.get_array("convs").ok());

        Ok(convs
            .map_or_else(Vec::new, |a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).take(limit).collect()))
    }

    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool> {
        let Some(meta) = self.file_meta(tenant, id).await? else { return Ok(false) };
        for gridfs_id in [thumb_id(&meta.id), meta.id.clone()] {
            match self.files().delete(Bson::String(gridfs_id)).await {
                Ok(()) => {}
                Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::GridFs(_)) => {}
                Err(e) => return Err(mongo_err(e)),
            }
        }
        self.file_refs_collection()
            .delete_one(doc! { "_id": format!("{tenant}\u{0}{id}") })
            .await
            .map_err(mongo_err)?;
        Ok(true)
    }

    async fn files_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(String, String)>> {
        use futures_util::TryStreamExt;
        let cursor = self
            .files()
            .find(doc! { "metadata.created_ms": { "$lt": before_ms as i64 } })
            .limit(limit as i64)
            .await
            .map_err(mongo_err)?;
        let docs: Vec<mongodb::gridfs::FilesCollectionDocument> = cursor.try_collect().await.map_err(mongo_err)?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let m: FileMeta = mongodb::bson::from_document(d.metadata?).ok()?;
                Some((m.tenant, m.id))
            })
            .collect())
    }
}
