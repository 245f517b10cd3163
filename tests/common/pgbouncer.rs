//! A real PgBouncer in transaction mode on loopback, in front of the test's Postgres, started and
//! stopped by the test. `scripts/test.sh` installs the `pgbouncer` Debian package when it can;
//! where it is missing, [`PgBouncer::start`] prints why and returns `None`, and the test skips.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

/// A running PgBouncer; dropping it stops it and removes its files.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode in front of `upstream`'s server (any database, as
    /// `upstream`'s user); `None`, with the reason printed, when PgBouncer is not installed.
    pub fn start(upstream: &PgConnectOptions) -> Option<Self> {
        let Some(binary) = super::find_program("pgbouncer") else {
            eprintln!(
                "SKIPPED: pgbouncer is not installed (scripts/test.sh installs the Debian package `pgbouncer` when run as root)"
            );
            return None;
        };
        let port = super::free_port();
        let dir =
            std::env::temp_dir().join(format!("jwt-revocation-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "[databases]\n\
             * = host={host} port={upstream_port} user={user}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 8\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {log}\n",
            host = upstream.get_host(),
            upstream_port = upstream.get_port(),
            user = upstream.get_username(),
            log = dir.join("pgbouncer.log").display(),
        );
        let ini = dir.join("pgbouncer.ini");
        std::fs::File::create(&ini)
            .and_then(|mut file| file.write_all(config.as_bytes()))
            .unwrap();
        let mut command = Command::new(&binary);
        if running_as_root() {
            // PgBouncer refuses to run as root; it switches to `-u`'s user, who needs its files.
            open_to_everyone(&dir);
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = PgBouncer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(bouncer)
    }

    /// The URL of `database` through this PgBouncer, as a sqlx user behind a transaction pooler
    /// writes it.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}?statement-cache-capacity=0",
            self.port
        )
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

fn open_to_everyone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o666));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
