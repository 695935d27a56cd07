//! What both proxies share below their policies: where they listen, the
//! connections they accept and open, the headers that never cross them, and
//! the accept loop that drains on shutdown.
//!
//! * [`listen`]: [`ListenAddr`] (`host:port` or `unix:PATH`), the bound
//!   [`Listener`], the [`Socket`] stream (TCP or unix, accepted or opened)
//!   and [`TransportError`];
//! * [`http`]: hop-by-hop header filtering ([`end_to_end`]) and the answer
//!   body type ([`ProxyBody`], [`full`]);
//! * [`accept`]: the accept loop ([`serve`]) with its [`AcceptBackoff`] on
//!   accept errors, and the graceful drain of open connections ([`Drain`],
//!   [`drive`]).
//!
//! Nothing here knows a policy: the socket proxy (`crate::socket`) and the
//! egress proxy (`crate::egress`) decide; this module only carries bytes.

pub mod accept;
pub mod http;
pub mod listen;

pub use self::http::{ProxyBody, end_to_end, full, is_hop_by_hop};
pub use accept::{Accept, AcceptBackoff, Drain, SHUTDOWN_GRACE, drive, serve};
pub use listen::{ListenAddr, Listener, Socket, TransportError, bind_tcp};
