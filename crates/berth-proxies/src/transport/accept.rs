//! The accept loop both proxies (and their `/metrics` listeners) run, and
//! the graceful drain of their connections on shutdown.
//!
//! **Accept errors.** Out of file descriptors, a connection reset before it
//! was accepted and the like: the loop logs the error, waits and goes on.
//! The wait grows: [`AcceptBackoff`] starts at 5 ms and doubles up to 1 s,
//! and is back to 5 ms after the next accept that succeeds. So a passing
//! hiccup costs 5 ms, and a listener that keeps failing (`EMFILE` until
//! some connection closes) neither spins on a core nor floods the log.
//!
//! **Shutdown.** Once `shutdown` completes the listener is closed (a unix
//! socket's file removed), every open connection is told to finish
//! ([`Drain`]): HTTP connections answer what they are answering and close
//! ([`drive`]); tunnels and upgraded streams get [`SHUTDOWN_GRACE`]. After
//! that grace (and one second more) whatever is still open is aborted.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::listen::{Listener, Socket};

/// How long open connections get to finish after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The wait after a failed accept: 5 ms, doubling to at most 1 s, back to
/// 5 ms once an accept succeeds.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    /// The wait after the first failure in a row.
    pub const FIRST: Duration = Duration::from_millis(5);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> AcceptBackoff {
        AcceptBackoff { next: Self::FIRST }
    }

    /// An accept failed: how long to wait before the next one.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(Self::MAX);
        wait
    }

    /// An accept succeeded: the next failure waits [`FIRST`](Self::FIRST)
    /// again.
    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> AcceptBackoff {
        AcceptBackoff::new()
    }
}

/// Something connections are accepted from.
pub trait Accept: Send + Sync {
    type Stream: Send + 'static;
    /// The next connection and its peer's name (for logs).
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for Listener {
    type Stream = Socket;
    fn accept(&self) -> impl Future<Output = io::Result<(Socket, String)>> + Send {
        Listener::accept(self)
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(tokio::net::TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        Ok((stream, peer.to_string()))
    }
}

/// Tells a connection that the server is shutting down. Every connection
/// gets a clone.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// Completes once shutdown is asked (or the server is gone).
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// Accepts connections from `acceptor` until `shutdown` completes, runs
/// `handle(stream, peer, drain)` for each one, then closes the acceptor
/// and drains (see the module docs). Accept errors are logged and backed
/// off ([`AcceptBackoff`]); they never end the loop.
pub async fn serve<A, F, Fut>(acceptor: A, shutdown: impl Future<Output = ()> + Send, mut handle: F)
where
    A: Accept,
    F: FnMut(A::Stream, String, &Drain) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = Drain(stop_rx);
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                connections.spawn(handle(stream, peer, &drain));
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(
                    error = %e,
                    wait_ms = wait.as_millis() as u64,
                    "accepting a connection failed; waiting before the next accept"
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(acceptor);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// A hyper server connection that can be asked to finish gracefully.
pub trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for http1::Connection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self)
    }
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// Drives one HTTP connection until it ends, `until` completes (the
/// connection is then dropped), or `drain` asks it to finish: then it
/// answers what it is answering and closes, within [`SHUTDOWN_GRACE`].
pub async fn drive(conn: impl Graceful, drain: &Drain, until: impl Future<Output = ()>) {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = until => {}
        () = drain.requested() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::*;

    #[test]
    fn accept_backoff_doubles_from_5ms_to_1s_and_resets_on_success() {
        let mut b = AcceptBackoff::new();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.failed(), AcceptBackoff::MAX);
        b.succeeded();
        assert_eq!(b.failed(), AcceptBackoff::FIRST);
        assert_eq!(b.failed(), Duration::from_millis(10));
        // Many failures in a row never overflow past the cap.
        for _ in 0..100 {
            assert!(b.failed() <= AcceptBackoff::MAX);
        }
    }

    /// Fails `failures` times, then hands out its streams, then waits.
    struct Flaky {
        failures: AtomicU32,
        calls: AtomicU32,
        streams: Mutex<Vec<tokio::net::UnixStream>>,
    }

    impl Flaky {
        fn new(failures: u32, streams: Vec<tokio::net::UnixStream>) -> Flaky {
            Flaky {
                failures: AtomicU32::new(failures),
                calls: AtomicU32::new(0),
                streams: Mutex::new(streams),
            }
        }
    }

    impl Accept for &'static Flaky {
        type Stream = tokio::net::UnixStream;
        async fn accept(&self) -> io::Result<(tokio::net::UnixStream, String)> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(io::Error::from_raw_os_error(24)); // EMFILE
            }
            let next = self.streams.lock().unwrap().pop();
            match next {
                Some(s) => Ok((s, "flaky".into())),
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn the_loop_survives_accept_errors_and_backs_off() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let flaky: &'static Flaky = Box::leak(Box::new(Flaky::new(4, vec![theirs])));
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let server = tokio::spawn(serve(
            flaky,
            async move {
                let _ = stop_rx.await;
            },
            move |stream, peer, _drain: &Drain| {
                let got_tx = got_tx.clone();
                async move {
                    let _ = got_tx.send((peer, start.elapsed()));
                    drop(stream);
                }
            },
        ));
        let (peer, at) = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .expect("a connection after the errors")
            .unwrap();
        assert_eq!(peer, "flaky");
        // 5 + 10 + 20 + 40 ms of backing off came first.
        assert!(at >= Duration::from_millis(75), "{at:?}");
        assert!(flaky.calls.load(Ordering::SeqCst) >= 5);
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the loop stops")
            .unwrap();
        drop(ours);
    }

    #[tokio::test]
    async fn shutdown_while_accepts_fail_drains_open_connections() {
        let (_ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        // One connection, then failures without end.
        let flaky: &'static Flaky = Box::leak(Box::new(Flaky::new(0, vec![theirs])));
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
        let mut drained_tx = Some(drained_tx);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            flaky,
            async move {
                let _ = stop_rx.await;
            },
            move |stream, _peer, drain: &Drain| {
                let drain = drain.clone();
                let drained_tx = drained_tx.take();
                // From now on every accept fails.
                flaky.failures.store(u32::MAX, Ordering::SeqCst);
                async move {
                    drain.requested().await;
                    drop(stream);
                    if let Some(tx) = drained_tx {
                        let _ = tx.send(());
                    }
                }
            },
        ));
        // Let it fail long enough to be in a long-ish wait.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let asked = Instant::now();
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the loop stops")
            .unwrap();
        // The open connection finished when told to, well within the grace.
        assert!(asked.elapsed() < SHUTDOWN_GRACE, "{:?}", asked.elapsed());
        drained_rx.await.expect("the connection was told to drain");
    }
}
