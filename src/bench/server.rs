//! A swapcast server for the load generator: this same binary, started as a child process on a
//! fresh SQLite database in a temporary folder, so it is measured as users run it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};

pub const ADMIN_EMAIL: &str = "bench-admin@swapcast.local";
pub const ADMIN_PASSWORD: &str = "bench-admin-password";

pub struct BenchServer {
    child: Child,
    /// swapcast's temporary database folder (the baseline has none).
    dir: Option<PathBuf>,
    pub port: u16,
}

impl BenchServer {
    /// Creates the database and its admin, starts `swapcast serve` on a free loopback port, and
    /// waits until it listens.
    pub fn start(extra_env: &[(&str, String)]) -> anyhow::Result<BenchServer> {
        Self::start_loaded(extra_env, None).map(|(server, _)| server)
    }

    /// [`start`](Self::start) on a network loaded first with `swapcast import` from
    /// (stations.csv, batteries.csv); returns the import's report too.
    pub fn start_loaded(
        extra_env: &[(&str, String)],
        network: Option<(&Path, &Path)>,
    ) -> anyhow::Result<(BenchServer, String)> {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let exe = std::env::current_exe().context("locating the swapcast binary")?;
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("swapcast-bench-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let database_url = format!("sqlite://{}", dir.join("bench.db").display());
        let mut report = String::new();
        if let Some((stations, batteries)) = network {
            let import = Command::new(&exe)
                .arg("import")
                .arg("--stations")
                .arg(stations)
                .arg("--batteries")
                .arg(batteries)
                .env("DATABASE_URL", &database_url)
                .output()?;
            if !import.status.success() {
                bail!("import failed: {}", String::from_utf8_lossy(&import.stderr));
            }
            report = String::from_utf8_lossy(&import.stdout).into_owned();
        }
        create_admin(&database_url)?;
        let server = Self::serve(&database_url, extra_env, Some(dir))?;
        Ok((server, report))
    }

    /// `swapcast serve` on `database_url` (which holds the bench's admin already, see
    /// [`create_admin`]); `dir` is removed when the server is dropped.
    pub fn serve(
        database_url: &str,
        extra_env: &[(&str, String)],
        dir: Option<PathBuf>,
    ) -> anyhow::Result<BenchServer> {
        let exe = std::env::current_exe().context("locating the swapcast binary")?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("SWAPCAST_BIND", "127.0.0.1:0")
            .env("SWAPCAST_JWT_SECRET", crate::auth::tokens::random_secret())
            .env("RUST_LOG", "warn,swapcast::startup=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        Self::spawn(command, dir)
    }

    /// Starts the reference broadcast server ([`super::baseline`]) the same way.
    pub fn start_baseline() -> anyhow::Result<BenchServer> {
        let exe = std::env::current_exe().context("locating the swapcast binary")?;
        let mut command = Command::new(exe);
        command
            .args(["bench", "baseline-serve"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Self::spawn(command, None)
    }

    /// Spawns `command` and waits for its `port=N` line.
    fn spawn(mut command: Command, dir: Option<PathBuf>) -> anyhow::Result<BenchServer> {
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let Some(line) = lines.next() else {
                bail!("the server exited before listening")
            };
            if let Some(rest) = line?.split("port=").nth(1) {
                break rest.trim().parse::<u16>()?;
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(BenchServer { child, dir, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Creates the bench's admin in `database_url` (migrating it first, as every command does).
pub fn create_admin(database_url: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the swapcast binary")?;
    let admin = Command::new(&exe)
        .args(["create-admin", "--email", ADMIN_EMAIL, "--display-name", "Bench"])
        .env("DATABASE_URL", database_url)
        .env("SWAPCAST_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()?;
    if !admin.status.success() {
        bail!("create-admin failed: {}", String::from_utf8_lossy(&admin.stderr));
    }
    Ok(())
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        // Best effort: the process and its temporary database are the bench's own.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
