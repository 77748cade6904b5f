//! What the proxy of one layer needs for every handshake it claims.

use std::sync::Arc;
use std::time::Duration;

use crate::balance::Backends;
use crate::handshake::Translation;
use crate::settings::Settings;
use crate::{Route, Tunnels};

/// The settings of one [`WebSocketProxyLayer`](crate::WebSocketProxyLayer),
/// shared by its services.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) backends: Backends,
    pub(crate) route: Route,
    pub(crate) translation: Translation,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    /// What every tunnel of the layer relays with, shared.
    pub(crate) settings: Arc<Settings>,
    pub(crate) tunnels: Tunnels,
    /// Whether the tunnel's log lines show the query string.
    pub(crate) log_query: bool,
}
