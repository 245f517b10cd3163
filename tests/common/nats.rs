//! A real `nats-server -js` on loopback with a store directory of its own, started, killed
//! (SIGKILL) and restarted on the same port and store by the test. `scripts/test.sh` installs
//! the Debian package `nats-server` when it can; where it is missing, [`NatsServer::start`]
//! prints why and returns `None`, and the test skips.
#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or killed) NATS server; dropping it kills it and removes its store.
pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a JetStream server on a free loopback port; `None` (with the reason printed)
    /// when `nats-server` is not installed.
    pub fn start() -> Option<Self> {
        let Some(binary) = super::find_program("nats-server") else {
            eprintln!(
                "SKIPPED: nats-server is not installed (scripts/test.sh installs the Debian package `nats-server` when run as root)"
            );
            return None;
        };
        let port = super::free_port();
        let dir = std::env::temp_dir().join(format!("jwt-revocation-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            dir,
            port,
            binary,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
