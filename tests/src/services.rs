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
