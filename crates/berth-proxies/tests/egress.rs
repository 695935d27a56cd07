//! The egress proxy on loopback: real upstreams (plain HTTP, TLS, echo),
//! real clients (raw bytes and reqwest), nothing mocked. Every upstream
//! counts the connections it accepts, so a denial is shown to have opened
//! none.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proxies::egress::{Allowlist, EgressProxy, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = "upstream-ok";

/// A loopback upstream. `heads` holds every request head it read.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Reads a request head, answers 200 `upstream-ok`, closes.
    Http,
    /// Echoes every byte until the client closes.
    Echo,
}

impl Upstream {
    async fn start(bind: &str, kind: Kind) -> Upstream {
        let listener = TcpListener::bind(bind).await.unwrap();
        Upstream::serve(listener, kind)
    }

    fn serve(listener: TcpListener, kind: Kind) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (a, h) = (accepted.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    match kind {
                        Kind::Http => {
                            let head = read_head(&mut s).await;
                            h.lock().unwrap().push(head);
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                                BODY.len()
                            );
                            let _ = s.write_all(answer.as_bytes()).await;
                            let _ = s.shutdown().await;
                        }
                        Kind::Echo => {
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            accepted,
            heads,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends `request` to the proxy and reads until it closes (5 s at most).
async fn exchange(proxy: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn allowlist(text: &str) -> Allowlist {
    Allowlist::from_toml(text, "test").unwrap()
}

/// Allows `localhost` and `127.0.0.1` on the allowed upstream's port only.
fn loopback_allowlist(port: u16) -> Allowlist {
    allowlist(&format!(
        "[[allow]]\ndomain = \"localhost\"\nports = [{port}]\n\n[[allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n"
    ))
}

/// An upstream nothing may reach, listening on 127.0.0.1 and 127.0.0.2
/// with one port, counting both.
async fn forbidden_upstream() -> (Upstream, Upstream) {
    loop {
        let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = one.local_addr().unwrap().port();
        if let Ok(two) = TcpListener::bind(("127.0.0.2", port)).await {
            return (
                Upstream::serve(one, Kind::Http),
                Upstream::serve(two, Kind::Http),
            );
        }
    }
}

#[tokio::test]
async fn connect_and_http_forwarding_reach_an_allowed_upstream() {
    let up = Upstream::start("127.0.0.1:0", Kind::Http).await;
    let u = up.port();
    let proxy = Running::start(loopback_allowlist(u), "127.0.0.1:0")
        .await
        .unwrap();

    // CONNECT, then a request through the tunnel, in every allowed spelling.
    for authority in [
        format!("localhost:{u}"),
        format!("LocalHost.:{u}"),
        format!("127.0.0.1:{u}"),
        format!("127.1:{u}"),
    ] {
        let (status, text) = exchange(
            proxy.addr(),
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\nGET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{authority}: {text}");
        assert!(text.contains(BODY), "{authority}: {text}");
    }

    // Plain HTTP: sent on in origin form, without the proxy's headers.
    let (status, text) = exchange(
        proxy.addr(),
        format!(
            "GET http://LOCALHOST:{u}/path?q=1 HTTP/1.1\r\nHost: localhost:{u}\r\nProxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with(BODY), "{text}");
    let head = up
        .heads
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("get /path?q=1 http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: localhost:{u}")), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
    assert!(!head.contains("proxy-"), "{head}");
    assert_eq!(up.accepted(), 5);

    // Every decision and the bytes are counted.
    let metrics = proxy.proxy().metrics().encode();
    assert!(
        metrics.contains(
            r#"berth_egress_requests_total{kind="connect",decision="allow",reason="allowed"} 4"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"berth_egress_requests_total{kind="http",decision="allow",reason="allowed"} 1"#
        ),
        "{metrics}"
    );
    let received = metrics
        .lines()
        .find(|l| l.starts_with(r#"berth_egress_bytes_total{direction="received"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(received >= 5 * BODY.len() as u64, "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn https_through_connect_with_a_real_client() {
    // A TLS upstream on loopback with a self-signed certificate for localhost.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let u = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let head = read_head(&mut s).await;
                let body = format!("tls-ok {}", head.lines().next().unwrap_or(""));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });

    let proxy = Running::start(loopback_allowlist(u), "127.0.0.1:0")
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.url()).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://localhost:{u}/secure"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "tls-ok GET /secure HTTP/1.1");

    // A denied name: the client sees the proxy's refusal.
    let err = client
        .get("https://example.invalid/")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("403") || format!("{err:?}").to_lowercase().contains("tunnel"),
        "{err:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_bypass_corpus_is_denied_without_touching_the_upstream() {
    let up = Upstream::start("127.0.0.1:0", Kind::Http).await;
    let u = up.port();
    let (forbidden, forbidden2) = forbidden_upstream().await;
    let d = forbidden.port();
    let proxy = Running::start(loopback_allowlist(u), "127.0.0.1:0")
        .await
        .unwrap();

    // (request, what the 403 body must name; "" when the request may be
    // refused with 400 before the proxy sees it).
    let connect = |a: &str| format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n");
    let get = |uri: &str, host: &str| {
        format!("GET {uri} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let corpus: Vec<(String, String)> = vec![
        // IP literals, every spelling of the forbidden 127.0.0.2.
        (connect(&format!("127.0.0.2:{d}")), format!("127.0.0.2:{d}")),
        (connect(&format!("127.2:{d}")), format!("127.0.0.2:{d}")),
        (
            connect(&format!("0x7f.0.0.2:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (connect(&format!("0x7f.2:{d}")), format!("127.0.0.2:{d}")),
        (
            connect(&format!("0x7f000002:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("2130706434:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("017700000002:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("0177.0.0.2:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("127.0.0.2.:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("[::ffff:127.0.0.2]:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            connect(&format!("[::ffff:7f00:2]:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        // The allowed address and name on a port that is not allowed.
        (connect(&format!("127.0.0.1:{d}")), format!("127.0.0.1:{d}")),
        (connect(&format!("127.1:{d}")), format!("127.0.0.1:{d}")),
        (connect(&format!("localhost:{d}")), format!("localhost:{d}")),
        (connect(&format!("LOCALHOST:{d}")), format!("localhost:{d}")),
        (
            connect(&format!("localhost.:{d}")),
            format!("localhost:{d}"),
        ),
        (connect(&format!("local%68ost:{d}")), String::new()),
        // IPv6 loopback is not 127.0.0.1.
        (connect(&format!("[::1]:{u}")), format!("[::1]:{u}")),
        (
            connect(&format!("[0:0:0:0:0:0:0:1]:{u}")),
            format!("[::1]:{u}"),
        ),
        // Userinfo, doubled ports, missing and malformed ports.
        (
            connect(&format!("localhost:{u}@127.0.0.2:{d}")),
            String::new(),
        ),
        (connect(&format!("user@127.0.0.1:{u}")), String::new()),
        (connect(&format!("localhost:{u}:{d}")), String::new()),
        (connect("localhost"), String::new()),
        (connect("localhost:0"), String::new()),
        (connect(&format!("localhost:+{u}")), String::new()),
        (connect(&format!("*.localhost:{u}")), String::new()),
        (connect(&format!("local host:{u}")), String::new()),
        (connect(&format!("ｌｏｃａｌｈｏｓｔ:{d}")), String::new()),
        // Plain HTTP.
        (
            get(&format!("http://127.0.0.2:{d}/"), &format!("127.0.0.2:{d}")),
            format!("127.0.0.2:{d}"),
        ),
        (
            get(&format!("http://127.1:{d}/"), &format!("127.1:{d}")),
            format!("127.0.0.1:{d}"),
        ),
        (
            get(
                &format!("http://[::ffff:127.0.0.2]:{d}/"),
                &format!("[::ffff:127.0.0.2]:{d}"),
            ),
            format!("127.0.0.2:{d}"),
        ),
        (
            get(
                &format!("http://2130706434:{d}/"),
                &format!("2130706434:{d}"),
            ),
            format!("127.0.0.2:{d}"),
        ),
        (
            get(&format!("http://localhost:{d}/"), &format!("localhost:{d}")),
            format!("localhost:{d}"),
        ),
        (get("http://localhost/", "localhost"), "localhost:80".into()),
        // Absolute form naming the allowed upstream, Host naming another.
        (
            get(&format!("http://localhost:{u}/"), &format!("127.0.0.2:{d}")),
            format!("localhost:{u}"),
        ),
        (
            get(&format!("http://localhost:{u}/"), "localhost"),
            format!("localhost:{u}"),
        ),
        (
            format!(
                "GET http://localhost:{u}/ HTTP/1.1\r\nHost: localhost:{u}\r\nHost: 127.0.0.2:{d}\r\n\r\n"
            ),
            format!("localhost:{u}"),
        ),
        (
            get(
                &format!("http://localhost:{u}@127.0.0.2:{d}/"),
                &format!("127.0.0.2:{d}"),
            ),
            String::new(),
        ),
        // Not a proxy request at all, or https in absolute form.
        (
            get("/", &format!("localhost:{u}")),
            format!("localhost:{u}"),
        ),
        (
            get(
                &format!("https://localhost:{u}/"),
                &format!("localhost:{u}"),
            ),
            format!("localhost:{u}"),
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            String::new(),
        ),
    ];
    assert!(corpus.len() >= 30);
    for (request, names) in &corpus {
        let (status, text) = exchange(proxy.addr(), request.as_bytes()).await;
        let first = request.lines().next().unwrap();
        if std::env::var("EGRESS_CORPUS_SHOW").is_ok() {
            eprintln!("{status} {first:?} {:?}", text.lines().last());
        }
        if names.is_empty() {
            assert!(
                (400..500).contains(&status),
                "{first:?} got {status}: {text}"
            );
        } else {
            assert_eq!(status, 403, "{first:?}: {text}");
            assert!(
                text.contains(&format!("berth egress-proxy: denied {names}")),
                "{first:?}: {text}"
            );
        }
    }
    assert_eq!(
        forbidden.accepted() + forbidden2.accepted(),
        0,
        "a denied request reached the forbidden upstream"
    );
    assert_eq!(
        up.accepted(),
        0,
        "a denied request reached the allowed upstream"
    );
    let metrics = proxy.proxy().metrics().encode();
    assert!(!metrics.contains(r#"decision="allow""#), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_allowed_name_on_a_private_address_needs_a_cidr_entry() {
    // The DNS-rebinding defence: `localhost` is allowed, but it resolves
    // to loopback, which only a `cidr` entry may open.
    let up = Upstream::start("127.0.0.1:0", Kind::Http).await;
    let u = up.port();
    let list = allowlist(&format!(
        "[[allow]]\ndomain = \"localhost\"\nports = [{u}]\n"
    ));
    let proxy = Running::start(list, "127.0.0.1:0").await.unwrap();
    let (status, text) = exchange(
        proxy.addr(),
        format!("CONNECT localhost:{u} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("resolves only to addresses no public destination has"),
        "{text}"
    );
    let (status, _) = exchange(
        proxy.addr(),
        format!(
            "GET http://localhost:{u}/ HTTP/1.1\r\nHost: localhost:{u}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(up.accepted(), 0);
    let metrics = proxy.proxy().metrics().encode();
    for kind in ["connect", "http"] {
        let line = format!(
            r#"berth_egress_requests_total{{kind="{kind}",decision="deny",reason="private-address"}} 1"#
        );
        assert!(metrics.contains(&line), "{metrics}");
    }

    // The same name with the loopback range allowed explicitly.
    proxy.proxy().set_allowlist(allowlist(&format!(
        "[[allow]]\ndomain = \"localhost\"\nports = [{u}]\n[[allow]]\ncidr = \"127.0.0.0/8\"\nports = [{u}]\n"
    )));
    let (status, text) = exchange(
        proxy.addr(),
        format!(
            "GET http://localhost:{u}/ HTTP/1.1\r\nHost: localhost:{u}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    proxy.stop().await;
}

#[tokio::test]
async fn limits_headers_connections_and_idle_time() {
    let echo = Upstream::start("127.0.0.1:0", Kind::Echo).await;
    let e = echo.port();
    let list = allowlist(&format!(
        "[limits]\nidle_timeout_seconds = 1\nmax_header_bytes = 8192\nmax_connections = 2\n\n[[allow]]\ncidr = \"127.0.0.1\"\nports = [{e}]\n"
    ));
    let proxy = Running::start(list, "127.0.0.1:0").await.unwrap();

    // A request head over the cap: 431, nothing forwarded.
    let big = "x".repeat(20_000);
    let (status, text) = exchange(
        proxy.addr(),
        format!(
            "GET http://127.0.0.1:{e}/ HTTP/1.1\r\nHost: 127.0.0.1:{e}\r\nX-Big: {big}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 431, "{text}");
    assert_eq!(echo.accepted(), 0);

    // Two connections at once; the third is refused with 503.
    let mut tunnel = TcpStream::connect(proxy.addr()).await.unwrap();
    tunnel
        .write_all(format!("CONNECT 127.0.0.1:{e} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let _second = TcpStream::connect(proxy.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, text) = exchange(proxy.addr(), b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        proxy
            .proxy()
            .metrics()
            .encode()
            .contains("berth_egress_connections_rejected_total 1")
    );

    // The tunnel relays while used, and is closed after a second of silence.
    tunnel.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), tunnel.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle tunnel stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        started.elapsed()
    );

    // Every connection closed (the second one idle too): none is counted
    // as open, and the slots are free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while !proxy
        .proxy()
        .metrics()
        .encode()
        .contains("berth_egress_connections 0")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            proxy.proxy().metrics().encode()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, text) = exchange(
        proxy.addr(),
        format!("GET http://127.0.0.1:{e}/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    proxy.stop().await;
}

#[tokio::test]
async fn reload_applies_to_new_requests_and_keeps_open_tunnels() {
    let echo = Upstream::start("127.0.0.1:0", Kind::Echo).await;
    let e = echo.port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allow.toml");
    std::fs::write(
        &path,
        format!("[[allow]]\ncidr = \"127.0.0.1\"\nports = [{e}]\n"),
    )
    .unwrap();
    let proxy = EgressProxy::new(Allowlist::from_file(&path).unwrap(), Some(path.clone()));
    let running = Running::start_with(proxy.clone(), "127.0.0.1:0")
        .await
        .unwrap();

    let mut tunnel = TcpStream::connect(running.addr()).await.unwrap();
    tunnel
        .write_all(format!("CONNECT 127.0.0.1:{e} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200"));

    // The destination is removed: new requests are denied…
    std::fs::write(&path, "[[allow]]\ndomain = \"example.com\"\n").unwrap();
    assert_eq!(proxy.reload().unwrap(), 1);
    let (status, text) = exchange(
        running.addr(),
        format!("CONNECT 127.0.0.1:{e} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    // …and the tunnel opened before the reload still works.
    tunnel.write_all(b"still-here").await.unwrap();
    let mut buf = [0u8; 10];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still-here");

    // A broken file is refused, naming line and key; the last good list stays.
    std::fs::write(
        &path,
        format!(
            "[[allow]]\ncidr = \"127.0.0.1\"\nports = [{e}]\n\n[[allow]]\ndomain = \"bad..name\"\n"
        ),
    )
    .unwrap();
    let err = proxy.reload().unwrap_err().to_string();
    assert!(err.contains("line 6: allow[2].domain"), "{err}");
    assert_eq!(proxy.allowlist().entries.len(), 1);
    assert_eq!(proxy.allowlist().entries[0].written, "example.com");
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"berth_egress_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_egress_reloads_total{result="error"} 1"#),
        "{metrics}"
    );
    running.stop().await;
}

#[test]
fn the_example_allowlist_parses() {
    let text = include_str!("../../../deploy/egress-allow.example.toml");
    let list = Allowlist::from_toml(text, "deploy/egress-allow.example.toml").unwrap();
    assert!(!list.entries.is_empty());
}

#[tokio::test]
async fn an_upstream_that_does_not_accept_times_out_with_504() {
    // A listener whose accept queue is full and never drained: the kernel
    // drops further SYNs, so a connect hangs, as to a black-holed host.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let list = allowlist(&format!(
        "[limits]\nconnect_timeout_seconds = 1\n\n[[allow]]\ncidr = \"127.0.0.1\"\nports = [{port}]\n"
    ));
    let proxy = Running::start(list, "127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();
    let (status, text) = exchange(
        proxy.addr(),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("timed out"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        proxy
            .proxy()
            .metrics()
            .encode()
            .contains(r#"berth_egress_upstream_errors_total{reason="timeout"} 1"#)
    );
    drop(listener);
    proxy.stop().await;
}

#[tokio::test]
async fn listens_on_a_unix_socket() {
    let up = Upstream::start("127.0.0.1:0", Kind::Http).await;
    let u = up.port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("egress.sock");
    let proxy = Running::start(loopback_allowlist(u), &format!("unix:{}", path.display()))
        .await
        .unwrap();
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(
        format!(
            "GET http://127.0.0.1:{u}/ HTTP/1.1\r\nHost: 127.0.0.1:{u}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with(BODY),
        "{out}"
    );
    proxy.stop().await;
}
