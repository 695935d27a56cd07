//! The `berth` binary's configuration commands.

use std::process::Command;

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/berth.example.toml"
    ))
    .unwrap()
}

/// A folder with the example config and the files it names.
fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.toml"), example()).unwrap();
    std::fs::write(dir.path().join("app.pem"), "not read by config check").unwrap();
    std::fs::write(dir.path().join("webhook.secret"), "s3cret\n").unwrap();
    dir
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let dir = example_dir();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("configuration OK: 1 pool(s), 1 scale set(s)"),
        "{stdout}"
    );
    // The example pins its image by digest, so there is no warning.
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn config_check_names_the_key_and_the_file_and_exits_64() {
    let dir = example_dir();
    let broken = example()
        .replace("max_runners = 10", "max_runners = 0")
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\"");
    std::fs::write(dir.path().join("berth.toml"), broken).unwrap();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("berth.toml: `pool[0].max_runners`: must be at least 1"),
        "{stderr}"
    );
    assert!(stderr.contains("berth.toml: `server.listen`"), "{stderr}");

    // `berth serve` refuses the same file the same way.
    let out = berth()
        .args(["serve", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`pool[0].max_runners`"));
}

#[test]
fn environment_variables_override_and_are_named_in_errors() {
    let dir = example_dir();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .env("BERTH_DISPATCH__GLOBAL_MAX_RUNNERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable BERTH_DISPATCH__GLOBAL_MAX_RUNNERS"),
        "{stderr}"
    );

    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .env("BERTH_STORE__URL", "postgres://berth@db/berth")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("store postgres://berth@db/berth"));
}

#[test]
fn an_unpinned_image_is_a_warning() {
    let dir = example_dir();
    let unpinned = example().replace(
        "ghcr.io/acme/berth-worker@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "ubuntu:latest",
    );
    std::fs::write(dir.path().join("berth.toml"), unpinned).unwrap();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning")
            && stderr.contains("`pool[0].image`")
            && stderr.contains("neither pinned by digest"),
        "{stderr}"
    );
}

#[test]
fn token_create_prints_once_and_stores_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let out = berth()
        .args([
            "token", "create", "--scope", "delegate", "--name", "proxy-1",
        ])
        .env_clear()
        .env("BERTH_STORE__URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("berth_"), "{token}");
    let raw = std::fs::read(&db).unwrap();
    let wal = std::fs::read(dir.path().join("berth.db-wal")).unwrap_or_default();
    let hay = [raw, wal].concat();
    assert!(
        !hay.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token itself was stored"
    );
    let hash = berth::api::auth::hash_token(&token);
    assert!(
        hay.windows(hash.len()).any(|w| w == hash.as_bytes()),
        "its hash was not stored"
    );

    let out = berth()
        .args(["token", "create", "--scope", "root"])
        .env_clear()
        .env("BERTH_STORE__URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Long operations show a live status line on a terminal, and only plain
/// timestamped lines when their output is captured.
#[test]
fn worker_image_build_shows_progress_on_a_terminal_and_plain_lines_otherwise() {
    let binary = env!("CARGO_BIN_EXE_berth");
    // `script` gives the command a pseudo-terminal, as an operator's shell does.
    let on_tty = Command::new("script")
        .args(["-qec", &format!("{binary} worker-image build"), "/dev/null"])
        .output()
        .unwrap();
    assert!(on_tty.status.success());
    let tty = String::from_utf8_lossy(&on_tty.stdout);
    assert!(
        tty.contains("connecting to Docker") && tty.contains("\x1b[2K"),
        "a redrawn status line: {tty:?}"
    );
    assert!(tty.contains("image: berth-worker-local:"), "{tty:?}");

    let piped = berth().args(["worker-image", "build"]).output().unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes in captured output: {stderr:?}"
    );
    assert!(!stderr.contains("connecting to Docker"), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with('[') && l.contains("s] ")),
        "timestamped event lines: {stderr:?}"
    );
}
