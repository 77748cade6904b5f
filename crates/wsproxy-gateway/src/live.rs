//! The configuration in force, and reloading it.
//!
//! Every request is served by the app of the configuration current when
//! it arrives ([`Switch`]): a reload builds the new app completely, then
//! swaps it in at once, so no request sees half of each. What already
//! runs keeps what it had: an open tunnel its backend, its permits and its
//! settings. Backend sets outlive a reload while their upstream's settings
//! are unchanged (their backends are diffed by URL: added, updated,
//! drained or removed), so their load, health and tunnels carry over;
//! the counts of the connection limits always do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use tower::Service;
use wsproxy::Tunnels;
use wsproxy::balance::Backends;

use crate::app::{self, Limiters};
use crate::cli::Args;
use crate::config::{Config, ConfigErrors};
use crate::tls::Certificate;

/// Where the configuration comes from: the file, the flags set over it,
/// and the demo's routes.
#[derive(Debug)]
pub(crate) struct Source {
    /// `--config`, if given.
    pub(crate) file: Option<PathBuf>,
    /// The command line.
    pub(crate) args: Args,
    /// The demo backends' addresses, once started.
    pub(crate) demo: Option<crate::demo::Backends>,
}

impl Source {
    /// Read the file (if any), set the flags over it, add the demo's
    /// routes, and check the result.
    pub(crate) fn load(&self) -> Result<Config, ConfigErrors> {
        let mut config = match &self.file {
            Some(file) => Config::read(file).map_err(|e| ConfigErrors(vec![e]))?,
            None => Config::default(),
        };
        self.args.apply(&mut config);
        if config.demo {
            // Before the demo backends start (to check), stand-ins: the
            // routes are what is checked.
            let stand_in = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
            let demo = self.demo.unwrap_or(crate::demo::Backends {
                echo: stand_in,
                chat: stand_in,
            });
            crate::demo::add_routes(&mut config, demo);
        }
        config.check(self.file.as_deref())?;
        Ok(config)
    }
}

/// The service every worker serves: the app of the current
/// configuration, looked up per request.
#[derive(Clone, Debug)]
pub(crate) struct Switch(Arc<ArcSwap<Router>>);

impl Service<Request<Incoming>> for Switch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = <Router as Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let mut router = Router::clone(&self.0.load());
        router.call(request)
    }
}

/// The configuration in force and what outlives a reload.
#[derive(Debug)]
pub(crate) struct Live {
    config: Config,
    /// The backend set of each upstream, by name.
    sets: BTreeMap<String, Backends>,
    limiters: Limiters,
    tunnels: Tunnels,
    app: Arc<ArcSwap<Router>>,
    /// The serving certificate, with TLS.
    certificate: Option<Arc<Certificate>>,
    /// Counts the configurations applied, the first one included.
    generation: u64,
}

impl Live {
    /// Serve `config` (checked).
    pub(crate) fn new(config: Config, tunnels: Tunnels) -> Result<Self, String> {
        let certificate = match &config.listen.tls {
            Some(files) => Some(Certificate::new(
                Certificate::load(&files.cert, &files.key).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let backend_tls = backend_tls(&config)?;
        let sets = config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), app::set(upstream, backend_tls.as_ref())))
            .collect();
        let mut limiters = Limiters::default();
        let router = app::router(&config, &sets, &tunnels, &mut limiters);
        Ok(Self {
            config,
            sets,
            limiters,
            tunnels,
            app: Arc::new(ArcSwap::from_pointee(router)),
            certificate,
            generation: 1,
        })
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The service to serve.
    pub(crate) fn service(&self) -> Switch {
        Switch(self.app.clone())
    }

    /// The serving certificate, with TLS.
    pub(crate) fn certificate(&self) -> Option<&Arc<Certificate>> {
        self.certificate.as_ref()
    }

    /// How many configurations were applied, the first one included.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// What the admin listener shows of it.
    pub(crate) fn view(&self) -> crate::admin::View {
        crate::admin::View {
            generation: self.generation,
            routes: self
                .config
                .routes
                .iter()
                .map(|route| {
                    let name = match &route.host {
                        Some(host) => format!("{host}{}", route.prefix),
                        None => route.prefix.clone(),
                    };
                    (
                        name,
                        route.upstream.clone(),
                        self.sets[&route.upstream].clone(),
                    )
                })
                .collect(),
        }
    }

    /// Apply `config` (checked) to new handshakes. What cannot change
    /// without new sockets or a new server (the listener, the workers,
    /// client connection bounds and timeouts, TLS turned on or off) is
    /// kept; the returned list names each such key that changed. The
    /// certificate is re-read (and changed only if that worked).
    pub(crate) fn apply(&mut self, config: Config) -> Result<Vec<&'static str>, String> {
        let old = &self.config;
        let mut kept = Vec::new();
        if config.listen.address != old.listen.address {
            kept.push("listen.address");
        }
        if config.listen.http2 != old.listen.http2 {
            kept.push("listen.http2");
        }
        if config.listen.tls.is_some() != old.listen.tls.is_some() {
            kept.push("listen.tls");
        }
        if config.workers != old.workers {
            kept.push("workers");
        }
        if config.connections != old.connections {
            kept.push("connections");
        }
        let server_timeouts = |c: &Config| {
            let t = &c.timeouts;
            (
                t.tls_handshake,
                t.detect,
                t.request_head,
                t.keepalive,
                t.http2_idle,
                t.shutdown,
            )
        };
        if server_timeouts(&config) != server_timeouts(old) {
            kept.push("timeouts (of client connections: tls_handshake, detect, request_head, keepalive, http2_idle, shutdown)");
        }
        if config.log != old.log {
            kept.push("log");
        }
        if config.admin != old.admin {
            kept.push("admin");
        }
        // The certificate: the last step that can fail.
        let certificate = match (&self.certificate, &config.listen.tls) {
            (Some(_), Some(files)) => {
                Some(Certificate::load(&files.cert, &files.key).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let backend_tls = backend_tls(&config)?;
        let tls_changed = config.backend_tls != old.backend_tls;
        let mut sets = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let kept_set = match (old.upstreams.get(name), self.sets.get(name)) {
                (Some(before), Some(set)) if !tls_changed && upstream.same_settings(before) => {
                    upstream.update(before, set);
                    Some(set.clone())
                }
                _ => None,
            };
            let set = kept_set.unwrap_or_else(|| app::set(upstream, backend_tls.as_ref()));
            sets.insert(name.clone(), set);
        }
        let router = app::router(&config, &sets, &self.tunnels, &mut self.limiters);
        // Nothing can fail from here: swap.
        if let (Some(serving), Some(key)) = (&self.certificate, certificate) {
            serving.replace(key);
        }
        self.app.store(Arc::new(router));
        self.sets = sets;
        self.config = config;
        self.generation += 1;
        Ok(kept)
    }
}

/// The backend TLS of `config` (checked with it, but its files may have
/// changed since).
fn backend_tls(config: &Config) -> Result<Option<wsproxy::tls::BackendTls>, String> {
    crate::tls::backend(&config.backend_tls).map_err(|(key, e)| format!("backend_tls.{key}: {e}"))
}
