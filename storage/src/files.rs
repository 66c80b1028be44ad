//! Uploaded files: metadata, bytes (and an image's thumbnail), and which
//! conversations refer to each file (who may download it).
//!
//! Embedded: the bytes are content-addressed under `<data>/files/` (a file
//! is written to a temporary name, fsync'd and renamed, so a crash never
//! leaves a half file under its final name); metadata and references are
//! records of the store. Cluster: MongoDB GridFS (bucket `files`), with the
//! metadata in each file document and references in `file_refs`.

use crate::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What is stored about one upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// A UUIDv7, chosen by the server.
    pub id: String,
    pub tenant: String,
    pub uploader: String,
    /// As the uploader named it (may be empty).
    pub name: String,
    /// Sniffed from the bytes.
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes as stored (after metadata was stripped).
    pub sha256: String,
    /// Images: pixels.
    pub width: u32,
    pub height: u32,
    /// Images: the thumbnail's size and type, if one was made.
    pub thumbnail: Option<Thumbnail>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// Which bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Original,
    Thumbnail,
}

/// Uploaded files.
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Stores a file (and its thumbnail) durably under `meta.id`.
    async fn put_file(&self, meta: &FileMeta, bytes: Vec<u8>, thumbnail: Option<Vec<u8>>) -> Result<()>;

    /// The file's metadata, if it exists in `tenant`.
    async fn file_meta(&self, tenant: &str, id: &str) -> Result<Option<FileMeta>>;

    /// `len` bytes from `offset` of the file or its thumbnail (fewer at the
    /// end); `None` if it does not exist.
    async fn read_file(&self, meta: &FileMeta, variant: Variant, offset: u64, len: u64) -> Result<Option<Vec<u8>>>;

    /// Records that a message of `conversation_id` refers to the file.
    async fn add_file_ref(&self, tenant: &str, id: &str, conversation_id: &str) -> Result<()>;

    /// Conversations whose messages refer to the file (at most `limit`).
    async fn file_refs(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<String>>;

    /// Deletes the file, its thumbnail and its references (bytes another
    /// upload shares stay for it). Returns whether it existed.
    async fn delete_file(&self, tenant: &str, id: &str) -> Result<bool>;

    /// Files uploaded before `before_ms`, as (tenant, id), at most `limit`.
    async fn files_before(&self, before_ms: u64, limit: usize) -> Result<Vec<(String, String)>>;
}
