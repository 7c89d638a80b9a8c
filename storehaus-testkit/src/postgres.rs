//! A private PostgreSQL cluster per test, for the faults the shared server
//! must never see: stopped, restarted; and hot standbys of one, for the
//! read replicas' tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{free_port, random_name};

/// A PostgreSQL cluster of a test's own: `initdb` into a fresh directory
/// under the temp dir, started on a free loopback port with trust auth,
/// stopped and removed on drop. Runs as the `postgres` user when the test
/// runs as root (`initdb` refuses root).
///
/// ```no_run
/// # async fn example() {
/// let mut pg = storehaus_testkit::PgServer::start();
/// let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
/// pg.stop();
/// pg.start_again();
/// # }
/// ```
pub struct PgServer {
    /// The loopback port it listens on (the same after a restart).
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Server settings given on every start (`-c name=value`).
    settings: Vec<String>,
}

/// The settings of [`PgServer::start_logical`]: logical decoding, and room
/// for the replication slots and WAL senders of a test's deployments.
pub const LOGICAL_SETTINGS: [&str; 3] = ["wal_level=logical", "max_replication_slots=20", "max_wal_senders=20"];

/// The directory of `initdb` and `pg_ctl`: `PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`, else `PATH`.
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return dir.into();
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, p)| p).unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    /// `initdb` + start; panics (the test's failure) if either fails.
    pub fn start() -> PgServer {
        Self::start_with(&[])
    }

    /// A cluster with `wal_level = logical` (and room for 20 replication
    /// slots and WAL senders), for invalidation from the write-ahead log.
    pub fn start_logical() -> PgServer {
        Self::start_with(&LOGICAL_SETTINGS)
    }

    /// A cluster started with these server settings (`name=value`, each
    /// given as `-c name=value` on every start).
    pub fn start_with(settings: &[&str]) -> PgServer {
        let dir = std::env::temp_dir().join(random_name("storehaus-pg"));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let server = PgServer {
            port: free_port(),
            dir,
            bin: pg_bin(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        let data = server.data();
        server.pg("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        server.start_again();
        server
    }

    /// A hot standby of `primary`: `pg_basebackup -R` (streaming, with a
    /// fast checkpoint) into a fresh directory, started on a free loopback
    /// port with the primary's settings; it replays what the primary
    /// writes, and tests pause it with `SELECT pg_wal_replay_pause()` (and
    /// resume it with `pg_wal_replay_resume()`) to make lag on demand.
    /// Stopped and removed on drop, like any `PgServer`.
    ///
    /// ```no_run
    /// # async fn example() {
    /// let primary = storehaus_testkit::PgServer::start();
    /// let standby = storehaus_testkit::PgServer::standby_of(&primary);
    /// let replica = sqlx::PgPool::connect(&standby.url()).await.unwrap();
    /// sqlx::query("SELECT pg_wal_replay_pause()").execute(&replica).await.unwrap();
    /// # }
    /// ```
    pub fn standby_of(primary: &PgServer) -> PgServer {
        let dir = std::env::temp_dir().join(random_name("storehaus-pg-standby"));
        std::fs::create_dir_all(&dir).expect("create the standby's directory");
        let server = PgServer {
            port: free_port(),
            dir,
            bin: primary.bin.clone(),
            settings: primary.settings.clone(),
        };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the standby's directory to postgres");
        }
        let port = primary.port.to_string();
        let data = server.data();
        server.pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A PostgreSQL program, run as the `postgres` user when root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Runs a PostgreSQL program as the `postgres` user when root; panics
    /// with its output if it fails.
    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `postgres://<user>@127.0.0.1:<port>/<database>` (trust auth: no password).
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the cluster (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        for setting in &self.settings {
            opts.push_str(" -c ");
            opts.push_str(setting);
        }
        let log = self.dir.join("log").display().to_string();
        self.pg("pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"]);
    }

    /// Stops the cluster (`-m fast`: open sessions are terminated, their
    /// transactions rolled back).
    pub fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
