//! The real `dongdong` binary as a child process, for crash and signal tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The server binary this package builds from `dongdong/src/main.rs`, with
/// the same dependency features as the tests (so no rebuild between runs).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dongdong-test-server"))
}

/// `auth.operator_key` of cluster nodes.
pub const OPERATOR_KEY: &str = "operator-key-of-the-cluster-tests";

pub struct ChildServer {
    child: Child,
    pub ws_url: String,
    pub http_url: String,
    stderr_log: PathBuf,
}

impl ChildServer {
    /// Starts `dongdong serve` on `data_dir` with ports chosen by the OS.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "child-node", &[])
    }

    /// A node of a cluster on the given Redis (the variable that names it,
    /// and its value) and MongoDB.
    /// `extra`: more settings.
    pub fn start_cluster(
        data_dir: &Path,
        node_id: &str,
        redis: (&str, &str),
        mongo_url: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env = vec![
            ("DONGDONG_STORAGE__BACKEND", "cluster"),
            redis,
            ("DONGDONG_STORAGE__MONGO_URL", mongo_url),
            ("DONGDONG_STORAGE__MONGO_DATABASE", database),
            // Fast failure detection for the failure tests.
            ("DONGDONG_TIMEOUTS__ACK", "1s"),
            ("DONGDONG_AUTH__OPERATOR_KEY", OPERATOR_KEY),
        ];
        env.extend_from_slice(extra);
        Self::start_with(data_dir, node_id, &env)
    }

    pub fn start_with(data_dir: &Path, node_id: &str, env: &[(&str, &str)]) -> Self {
        Self::start_args(data_dir, node_id, env, &[])
    }

    /// Like [`ChildServer::start_with`], with more arguments to `serve`.
    pub fn start_args(data_dir: &Path, node_id: &str, env: &[(&str, &str)], args: &[String]) -> Self {
        let stderr_log = data_dir.with_extension("stderr.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_log).unwrap();
        let mut child = Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data"])
            .arg(data_dir)
            .args(args)
            .env("DONGDONG_AUTH__SECRET", dongdong_tests::SECRET)
            .env("DONGDONG_STORAGE__NODE_ID", node_id)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn dongdong");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}; log at {}", stderr_log.display()))
                .to_string()
        };
        let (ws_url, http_url) = (field("ws="), field("http="));
        Self { child, ws_url, http_url, stderr_log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends a signal (`"TERM"`, `"INT"`), then waits for the exit status.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }

    /// SIGHUP: the server reads its certificate and config file again.
    pub fn hangup(&self) {
        let status = Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of the dongdong child ({}) ---\n{}", self.stderr_log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
