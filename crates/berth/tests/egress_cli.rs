//! `berth egress-proxy` as operators run it: a bad allowlist exits 64
//! naming the line and key; SIGHUP reloads the allowlist without dropping
//! an open tunnel; `--metrics` serves the counters; every decision is a
//! JSON log line; SIGTERM stops it. Loopback only.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn metrics(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` to the proxy and reads the answer's head.
async fn ask(proxy: u16, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn a_bad_allowlist_exits_64_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allow.toml");
    std::fs::write(
        &file,
        "[[allow]]\ndomain = \"github.com\"\n\n[[allow]]\ncidr = \"10.0.0.1/8\"\n",
    )
    .unwrap();
    let out = berth()
        .args(["egress-proxy", "--listen", "127.0.0.1:0", "--allow"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 5: allow[2].cidr"), "{stderr}");
    assert!(stderr.contains("did you mean `10.0.0.0/8`"), "{stderr}");

    let out = berth()
        .args(["egress-proxy", "--listen", "127.0.0.1:0", "--allow"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test]
async fn sighup_reloads_without_dropping_tunnels() {
    // An echo upstream on loopback.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allow.toml");
    std::fs::write(
        &file,
        format!("[[allow]]\ncidr = \"127.0.0.1\"\nports = [{e}]\n"),
    )
    .unwrap();
    let (p, m) = (free_port(), free_port());
    let mut child = berth()
        .args([
            "egress-proxy",
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--metrics",
            &format!("127.0.0.1:{m}"),
            "--allow",
        ])
        .arg(&file)
        .env("BERTH_LOGS__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the proxy listens", async || {
        TcpStream::connect(("127.0.0.1", p)).await.is_ok()
    })
    .await;

    let connect = format!("CONNECT 127.0.0.1:{e} HTTP/1.1\r\n\r\n");
    let (mut tunnel, head) = ask(p, &connect).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Remove the upstream from the list and send SIGHUP.
    std::fs::write(&file, "[[allow]]\ndomain = \"example.com\"\n").unwrap();
    signal(&child, "-HUP");
    wait_for("the reload is counted", async || {
        metrics(m)
            .await
            .contains(r#"berth_egress_reloads_total{result="ok"} 1"#)
    })
    .await;
    let (_, head) = ask(p, &connect).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // The tunnel opened before the reload still carries bytes.
    tunnel.write_all(b"after-reload").await.unwrap();
    let mut buf = [0u8; 12];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after-reload");

    // A broken file on SIGHUP: refused, counted, the last good list stays.
    std::fs::write(&file, "[[allow]]\ndomain = \"a..b\"\n").unwrap();
    signal(&child, "-HUP");
    wait_for("the failed reload is counted", async || {
        metrics(m)
            .await
            .contains(r#"berth_egress_reloads_total{result="error"} 1"#)
    })
    .await;
    let text = metrics(m).await;
    assert!(
        text.contains(
            r#"berth_egress_requests_total{kind="connect",decision="allow",reason="allowed"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"berth_egress_requests_total{kind="connect",decision="deny",reason="not-allowed"} 1"#
        ),
        "{text}"
    );

    drop(tunnel);
    signal(&child, "-TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let decisions: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.to_string().contains("\"decision\""))
        .collect();
    assert_eq!(decisions.len(), 2, "{logs}");
    assert!(logs.contains("egress allowlist NOT reloaded"), "{logs}");
    assert!(logs.contains("allow[1].domain"), "{logs}");
}
