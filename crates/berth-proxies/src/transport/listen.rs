//! Listen addresses, bound listeners and the stream type both proxies use.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// An address that cannot be used, or a listener that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid address `{addr}`: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
}

impl TransportError {
    /// `addr` is not usable, for `reason`.
    pub fn address(addr: &str, reason: &str) -> TransportError {
        TransportError::Address {
            addr: addr.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Where a proxy listens: `host:port` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl ListenAddr {
    /// `host:port` (also `tcp://host:port`) or `unix:PATH` (also
    /// `unix://PATH`).
    pub fn parse(addr: &str) -> Result<ListenAddr, TransportError> {
        if let Some(path) = addr
            .strip_prefix("unix://")
            .or_else(|| addr.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(TransportError::address(addr, "expected unix:PATH"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let tcp = addr.strip_prefix("tcp://").unwrap_or(addr);
        if !tcp.contains(':') || tcp.contains('/') {
            return Err(TransportError::address(
                addr,
                "expected host:port or unix:PATH",
            ));
        }
        Ok(ListenAddr::Tcp(tcp.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Binds a plain TCP listener (the proxies' `/metrics` address).
pub async fn bind_tcp(addr: &str) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

/// A bound listener. A unix socket's file is removed when it is dropped.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `addr`. A unix socket path left by an earlier run is replaced;
    /// the new socket is made `0660` (owner and group: give the group to
    /// whoever runs berth).
    pub async fn bind(addr: &ListenAddr) -> Result<Listener, TransportError> {
        let failed = |source: io::Error| TransportError::Listen {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await.map_err(failed)?)),
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    std::fs::remove_file(path).map_err(failed)?;
                }
                let listener = UnixListener::bind(path).map_err(failed)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(failed)?;
                Ok(Listener::Unix(listener, path.clone()))
            }
        }
    }

    /// `IP:PORT` (the port the system chose, for port 0) or `unix:PATH`.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }

    /// `tcp://IP:PORT` or `unix://PATH`: what a Docker client is given.
    pub fn docker_host(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp://{a}"))
                .unwrap_or_default(),
            Listener::Unix(_, path) => format!("unix://{}", path.display()),
        }
    }

    /// Accepts a connection and names its peer (`IP:PORT`, or `unix`), for
    /// logs. TCP connections get `TCP_NODELAY`.
    pub async fn accept(&self) -> io::Result<(Socket, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Socket::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, _) => Ok((Socket::Unix(l.accept().await?.0), "unix".to_owned())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A unix-socket or TCP connection: accepted from a client, or opened to an
/// upstream.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_host_port_or_unix_paths() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:2375").unwrap(),
            ListenAddr::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            ListenAddr::parse("tcp://0.0.0.0:3128").unwrap(),
            ListenAddr::Tcp("0.0.0.0:3128".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/berth/docker.sock").unwrap(),
            ListenAddr::Unix("/run/berth/docker.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:///run/x.sock").unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        for bad in ["unix:", "localhost", "http://h:1/x", ""] {
            let e = ListenAddr::parse(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid address `{bad}`")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn listen_addresses_display_as_written() {
        for text in ["127.0.0.1:0", "unix:/tmp/p.sock"] {
            assert_eq!(ListenAddr::parse(text).unwrap().to_string(), text);
        }
    }

    #[tokio::test]
    async fn a_unix_listener_replaces_a_stale_socket_and_removes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let addr = ListenAddr::Unix(path.clone());
        let listener = Listener::bind(&addr).await.unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660);
        }
        assert_eq!(listener.local_addr(), format!("unix:{}", path.display()));
        assert_eq!(listener.docker_host(), format!("unix://{}", path.display()));
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.unwrap() }
        });
        let (_socket, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, "unix");
        drop(client.await.unwrap());
        drop(listener);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_busy_address_names_itself_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let Err(e) = Listener::bind(&ListenAddr::parse(&addr).unwrap()).await else {
            panic!("bound a taken address");
        };
        assert!(
            e.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{e}"
        );
    }
}
