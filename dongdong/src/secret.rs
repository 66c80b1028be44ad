//! The token secret: `[auth] secret` when set, else a dev secret generated on
//! first start and kept in the data directory so restarts and `dongdong
//! token` agree.

use crate::Config;
use anyhow::Context;
use std::path::PathBuf;

const DEV_SECRET_FILE: &str = "dev-secret";

pub fn dev_secret_path(config: &Config) -> PathBuf {
    config.storage.data_dir.join(DEV_SECRET_FILE)
}

/// The secret bytes to sign and verify tokens with.
pub fn resolve(config: &Config) -> anyhow::Result<Vec<u8>> {
    if !config.auth.secret.is_empty() {
        return Ok(config.auth.secret.as_bytes().to_vec());
    }
    let path = dev_secret_path(config);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(&config.storage.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.storage.data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &secret).with_context(|| format!("cannot write the dev secret to {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no [auth] secret configured: generated a dev secret; set DONGDONG_AUTH__SECRET for production and clusters"
    );
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}
