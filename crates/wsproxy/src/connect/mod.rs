//! Connecting to a backend: a [`Connector`] opens the connection (TCP by
//! default; a Unix socket, a proxy hop or a test double of yours), TLS
//! goes over it for `wss://` backends (feature `tls`), and the HTTP/1.1
//! upgrade exchange runs on it: one write, the answer's head parsed with
//! `httparse`, no HTTP client connection.

mod connector;
mod dial;
mod exchange;
mod refusal;
mod stream;

pub use self::connector::Connector;
pub(crate) use self::dial::{Dialer, connect};
pub(crate) use self::exchange::{Answer, Failure, complete_upgrade_request, handshake};
pub(crate) use self::refusal::RefusalBody;
pub(crate) use self::stream::{BackendStream, Upgraded};
