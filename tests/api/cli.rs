//! The `swapcast` binary itself: `migrate`, `create-admin`, and `serve` with no setup.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_swapcast");

#[test]
fn migrate_and_create_admin() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let migrate = Command::new(BIN)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let admin = Command::new(BIN)
        .args(["create-admin", "--email", "root@swapcast.test", "--database-url", &url])
        .env("SWAPCAST_ADMIN_PASSWORD", "a long password")
        .output()
        .unwrap();
    assert!(admin.status.success(), "{}", String::from_utf8_lossy(&admin.stderr));
    assert!(String::from_utf8_lossy(&admin.stdout).contains("root@swapcast.test"));
    // The same email twice is refused.
    let again = Command::new(BIN)
        .args([
            "create-admin",
            "--email",
            "root@swapcast.test",
            "--password",
            "a long password",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// With no arguments and no environment, `swapcast` serves on 127.0.0.1:8000 from a SQLite file
/// in the working directory.
#[test]
fn serves_with_no_setup() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut healthy = false;
    while Instant::now() < deadline && !healthy {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:8000") {
            use std::io::{Read, Write};
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            healthy = response.starts_with("HTTP/1.1 200");
        }
    }
    let exited_early = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited_early.is_none(), "the server exited: {exited_early:?}");
    assert!(healthy, "no healthy answer on 127.0.0.1:8000");
    assert!(
        dir.path().join("swapcast.db").exists(),
        "the SQLite file is in the working directory"
    );
}
