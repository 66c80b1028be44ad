//! Private Redis and secantusdb (MongoDB wire protocol) servers for tests
//! that stop and restart them. scripts/test.sh says where the programs are
//! (DDTEST_REDIS_SERVER, DDTEST_SECANTUS_PYTHON); under CI=true a missing one
//! fails the test, elsewhere the test is skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value of `var`, or `None` to skip the test (a failure under CI=true).
pub fn required(var: &str) -> Option<String> {
    storage::conformance::required_env(var)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if there is one and waits until its port is free.
fn stop_child(child: &mut Option<Child>, port: u16) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
        wait_for_port_closed(port);
    }
}

fn wait_for_port_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "port {port} still open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server that persists every write (AOF, fsync always), as a
/// cluster deployment's Redis must, so a restart loses nothing.
pub struct PrivateRedis {
    program: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(dir: &Path) -> Option<Self> {
        let program = required("DDTEST_REDIS_SERVER")?;
        let mut r = Self { program, port: free_port(), dir: dir.to_path_buf(), child: None };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL: no goodbye) if running, then starts it again on the
    /// same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new(&self.program)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child, self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Redis Cluster: `masters` masters with a replica each, every
/// node with an append-only file (fsync always) and a node timeout of 2 s,
/// so a killed master's replica takes over within seconds.
pub struct PrivateRedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    cli: PathBuf,
}

impl PrivateRedisCluster {
    pub fn start(dir: &Path, masters: usize) -> Option<Self> {
        let program = required("DDTEST_REDIS_SERVER")?;
        let cli = Path::new(&program).with_file_name("redis-cli");
        let cli = if cli.exists() { cli } else { PathBuf::from("redis-cli") };
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            // The cluster bus listens on port + 10000.
            let port = loop {
                let p = free_port();
                if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                    break p;
                }
            };
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new(&program)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"])
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push((port, Some(child)));
        }
        for (port, _) in &nodes {
            wait_for_port(*port, "redis-server (cluster node)");
        }
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let c = Self { nodes, cli };
        // A replica that has not synced with its master yet cannot take over.
        c.wait_until(|c| c.replicas() == masters && c.ok() && c.synced(), "the Redis Cluster to come up");
        Some(c)
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new(&self.cli).arg("-p").arg(port.to_string()).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default()
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|(_, c)| c.is_some()).map(|(p, _)| *p)
    }

    fn replicas(&self) -> usize {
        self.live().next().map(|p| self.cli(p, &["cluster", "nodes"]).matches(" slave ").count()).unwrap_or(0)
    }

    /// Every replica has synced with its master.
    fn synced(&self) -> bool {
        self.live().all(|p| {
            let info = self.cli(p, &["info", "replication"]);
            !info.contains("role:slave") || info.contains("master_link_status:up")
        })
    }

    /// Every live node sees all slots served.
    fn ok(&self) -> bool {
        self.live().all(|p| self.cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
    }

    fn wait_until(&self, done: impl Fn(&Self) -> bool, what: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            let nodes = || self.live().next().map(|p| self.cli(p, &["cluster", "nodes"])).unwrap_or_default();
            assert!(Instant::now() < until, "timed out waiting for {what}:\n{}", nodes());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The seeds, for `storage.redis_cluster`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|(p, _)| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Kills a master (SIGKILL) and returns once its replica has taken its
    /// slots over; how long that took.
    pub fn kill_a_master(&mut self) -> Duration {
        let started = Instant::now();
        let port = self.live().find(|p| self.cli(*p, &["role"]).starts_with("master")).expect("a master");
        let slot = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        stop_child(&mut slot.1, port);
        self.wait_until(
            |c| {
                let nodes = c.live().next().map(|p| c.cli(p, &["cluster", "nodes"])).unwrap_or_default();
                nodes.lines().any(|l| l.contains(&format!("127.0.0.1:{port}@")) && l.contains(",fail ")) && c.ok()
            },
            "a replica to take over",
        );
        started.elapsed()
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for (port, child) in &mut self.nodes {
            stop_child(child, *port);
        }
    }
}

/// A secantusdb server that can be stopped and started on the same data.
pub struct PrivateMongo {
    python: String,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateMongo {
    pub fn start(dir: &Path) -> Option<Self> {
        let python = required("DDTEST_SECANTUS_PYTHON")?;
        let mut m = Self { python, port: free_port(), dir: dir.to_path_buf(), child: None };
        m.resume();
        Some(m)
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        stop_child(&mut self.child, self.port);
    }

    /// Starts it (again) on the same port and data.
    pub fn resume(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.with_extension("secantus.log")).unwrap();
        let child = Command::new(&self.python)
            .args(["-m", "secantus", "--port", &self.port.to_string(), "--storage-path"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start secantusdb");
        self.child = Some(child);
        wait_for_port(self.port, "secantusdb");
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        self.stop();
    }
}
