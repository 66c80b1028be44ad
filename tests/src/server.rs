//! An in-process server on port 0 with its own data directory.

use crate::{Client, SECRET};
use access_gateway::TokenSigner;
use dongdong_server::Config;
use im_core::Role;
use std::sync::Arc;
use std::time::Duration;
use storage::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub ws_url: String,
    pub http_url: String,
    pub config: Config,
    pub backends: Backends,
    signer: TokenSigner,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    store: Option<dongdong_server::Store>,
    pub dir: Arc<tempfile::TempDir>,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.auth.secret = SECRET.into();
    config.storage.data_dir = dir.to_path_buf();
    config.storage.node_id = "test-node".into();
    config
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let (backends, store) = dongdong_server::open_storage(&config, "test-node").await.unwrap();
        Self::start_on(config, backends, store, dir).await
    }

    /// Starts on given backends (e.g. with faults injected).
    pub async fn start_on(
        config: Config,
        backends: Backends,
        store: dongdong_server::Store,
        dir: Arc<tempfile::TempDir>,
    ) -> Self {
        init_logs();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_url = format!("ws://{}/ws", ws.local_addr().unwrap());
        let http_url = format!("http://{}", http.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = {
            let (config, backends, shutdown) = (config.clone(), backends.clone(), shutdown.clone());
            tokio::spawn(async move {
                dongdong_server::run_with_backends(ws, http, &config, "test-node", backends, shutdown).await
            })
        };
        Self {
            ws_url,
            http_url,
            config,
            backends,
            signer: TokenSigner::new(SECRET.as_bytes()),
            shutdown,
            task: Some(task),
            store: Some(store),
            dir,
        }
    }

    pub fn token(&self, tenant: &str, user: &str) -> String {
        self.token_with_role(tenant, user, Role::Customer)
    }

    pub fn token_with_role(&self, tenant: &str, user: &str, role: Role) -> String {
        self.signer.mint(tenant, user, role, Duration::from_secs(3600)).unwrap()
    }

    /// A token with `name` and `avatar` claims.
    pub fn token_named(&self, tenant: &str, user: &str, role: Role, name: &str, avatar: &str) -> String {
        self.signer.mint_named(tenant, user, role, Duration::from_secs(3600), name, avatar).unwrap()
    }

    /// An authenticated protobuf client.
    pub async fn login(&self, tenant: &str, user: &str, device: &str) -> Client {
        Client::login(&self.ws_url, &self.token(tenant, user), device).await
    }

    /// Waits until `user` has exactly `n` presence entries.
    pub async fn wait_presence(&self, tenant: &str, user: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + crate::client::WAIT;
        loop {
            let found = self.backends.presence.lookup(tenant, user).await.unwrap().len();
            if found == n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{user} has {found} presence entries, expected {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server (connections get 1012) and closes its store.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        if let Some(store) = self.store.take() {
            store.close().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
