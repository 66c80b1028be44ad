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
///
/// Creating the dev secret is atomic: it is written to a private temporary
/// file and hard-linked into place, which fails if another process (a
/// starting server, a concurrent `dongdong token`) got there first; then that
/// process's secret is used. A secret is never overwritten.
pub fn resolve(config: &Config) -> anyhow::Result<Vec<u8>> {
    if !config.auth.secret.is_empty() {
        return Ok(config.auth.secret.as_bytes().to_vec());
    }
    let path = dev_secret_path(config);
    if let Some(existing) = read_existing(&path)? {
        return Ok(existing);
    }
    std::fs::create_dir_all(&config.storage.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.storage.data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let tmp = path.with_extension(format!("tmp-{}-{:016x}", std::process::id(), rand::random::<u64>()));
    write_private(&tmp, &secret).with_context(|| format!("cannot write {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "no [auth] secret configured: generated a dev secret; set DONGDONG_AUTH__SECRET for production and clusters"
            );
            Ok(secret.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_existing(&path)?.ok_or_else(|| anyhow::anyhow!("{} is empty or too short", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create the dev secret {}", path.display())),
    }
}

/// The secret if one exists: `[auth] secret`, else the dev secret file.
/// Never creates one (for clients such as `dongdong bot`).
pub fn existing(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    if !config.auth.secret.is_empty() {
        return Ok(Some(config.auth.secret.as_bytes().to_vec()));
    }
    read_existing(&dev_secret_path(config))
}

fn read_existing(path: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 32 => Ok(Some(s.trim().as_bytes().to_vec())),
        Ok(_) => anyhow::bail!("{} is too short to be a secret; delete it to generate a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the dev secret {}", path.display())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_resolvers_agree_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.data_dir = dir.path().join("data");
        let secrets: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| resolve(&config).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.windows(2).all(|w| w[0] == w[1]), "every resolver got the same secret");
        assert_eq!(resolve(&config).unwrap(), secrets[0]);
        let leftovers = std::fs::read_dir(&config.storage.data_dir).unwrap().count();
        assert_eq!(leftovers, 1, "only dev-secret remains");
        config.auth.secret = "configured-secret-123".into();
        assert_eq!(resolve(&config).unwrap(), b"configured-secret-123".to_vec());
    }
}
