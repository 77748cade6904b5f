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
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use tower::{Service, ServiceExt as _};
use wsproxy::Tunnels;
use wsproxy::balance::Backends;

use futures_util::future::Either;

use crate::app::{self, App, Limiters};
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
            // The balancing flags reach the demo's upstreams too.
            for (name, upstream) in &mut config.upstreams {
                if name.starts_with("demo/") {
                    self.args.balance.apply(upstream);
                }
            }
        }
        config.check(self.file.as_deref())?;
        Ok(config)
    }
}

/// The service every worker serves: the app of the current
/// configuration, looked up per request.
#[derive(Clone, Debug)]
pub(crate) struct Switch(Arc<ArcSwap<App>>);

impl Service<Request<Incoming>> for Switch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Either<tower::util::Oneshot<app::Stack, Request<Incoming>>, app::PlainServiceFuture>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let app = self.0.load();
        if wsproxy::is_handshake(&request) {
            return Either::Left(app.handshakes.clone().oneshot(request));
        }
        // Every layer of `handshakes` would pass it through (see `App`).
        Either::Right(app.plain.answer(request))
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
    app: Arc<ArcSwap<App>>,
    /// The serving certificate of each listener with TLS, in the order of
    /// `config.listen`.
    certificates: Vec<Option<Arc<Certificate>>>,
    /// Counts the configurations applied, the first one included.
    generation: u64,
}

impl Live {
    /// Serve `config` (checked).
    pub(crate) fn new(config: Config, tunnels: Tunnels) -> Result<Self, String> {
        let mut certificates = Vec::with_capacity(config.listen.len());
        for listen in &config.listen {
            certificates.push(match &listen.tls {
                Some(files) => Some(Certificate::new(
                    Certificate::load(&files.cert, &files.key).map_err(|e| e.to_string())?,
                )),
                None => None,
            });
        }
        let backend_tls = backend_tls(&config)?;
        let sets = config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), app::set(upstream, backend_tls.as_ref())))
            .collect();
        let mut limiters = Limiters::default();
        let app = app::app(&config, &sets, &tunnels, &mut limiters);
        Ok(Self {
            config,
            sets,
            limiters,
            tunnels,
            app: Arc::new(ArcSwap::from_pointee(app)),
            certificates,
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

    /// The serving certificate of listener `index`, if it has TLS.
    pub(crate) fn certificate(&self, index: usize) -> Option<&Arc<Certificate>> {
        self.certificates.get(index).and_then(Option::as_ref)
    }

    /// How many configurations were applied, the first one included.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// What the admin listener shows of it.
    pub(crate) fn view(&self) -> crate::admin::View {
        crate::admin::View {
            generation: self.generation,
            routes: app::page_routes(&self.config, &self.sets),
        }
    }

    /// Apply `config` (checked) to new handshakes. What cannot change
    /// without new sockets, a new server or a restart (the listener, the
    /// admin listener, the workers, client connection bounds and
    /// timeouts, TLS turned on or off, the log's file and format, the
    /// demo) keeps the value in force, in what is applied and in what is
    /// remembered for the next reload; the returned list names each such
    /// key that the file changed. The certificate is re-read (and changed
    /// only if that worked).
    pub(crate) fn apply(&mut self, mut config: Config) -> Result<Vec<String>, String> {
        let old = &self.config;
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:expr) => {
                if config.$($field).+ != old.$($field).+ {
                    kept.push($name.to_owned());
                    config.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        // What needs new sockets or a new server: the listeners, but for
        // their certificate files (re-read) and hsts.
        let shape = |listen: &[crate::config::Listen]| {
            listen
                .iter()
                .map(|l| {
                    (
                        l.address,
                        l.http2,
                        l.tls.is_some(),
                        l.proxy_protocol,
                        l.proxy_protocol_from.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        if shape(&config.listen) != shape(&old.listen) {
            kept.push("listen (addresses, http2, TLS on or off, proxy_protocol)".to_owned());
            config.listen.clone_from(&old.listen);
        }
        keep!(admin, "admin");
        keep!(watch, "watch");
        keep!(redirect, "redirect");
        keep!(workers, "workers");
        keep!(connections, "connections");
        keep!(timeouts.tls_handshake, "timeouts.tls_handshake");
        keep!(timeouts.detect, "timeouts.detect");
        keep!(timeouts.request_head, "timeouts.request_head");
        keep!(timeouts.keepalive, "timeouts.keepalive");
        keep!(timeouts.http2_idle, "timeouts.http2_idle");
        keep!(log.file, "log.file");
        keep!(log.format, "log.format");
        keep!(log.access, "log.access");
        if config.demo != old.demo {
            // The demo's backends start (or stop) with the process.
            kept.push("demo".to_owned());
            if old.demo {
                config.demo = true;
                for route in old
                    .routes
                    .iter()
                    .filter(|r| r.upstream.starts_with("demo/"))
                {
                    config.routes.push(route.clone());
                    config.upstreams.insert(
                        route.upstream.clone(),
                        old.upstreams[&route.upstream].clone(),
                    );
                }
            } else {
                config.demo = false;
                let demo: Vec<String> = config
                    .routes
                    .iter()
                    .filter(|r| r.upstream.starts_with("demo/"))
                    .map(|r| r.upstream.clone())
                    .collect();
                config.routes.retain(|r| !demo.contains(&r.upstream));
                for name in demo {
                    config.upstreams.remove(&name);
                }
            }
        }
        // The certificates: the last step that can fail.
        let mut certificates = Vec::with_capacity(config.listen.len());
        for (serving, listen) in self.certificates.iter().zip(&config.listen) {
            certificates.push(match (serving, &listen.tls) {
                (Some(_), Some(files)) => {
                    Some(Certificate::load(&files.cert, &files.key).map_err(|e| e.to_string())?)
                }
                _ => None,
            });
        }
        let backend_tls = backend_tls(&config)?;
        let mut sets = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let kept_set = match (old.upstreams.get(name), self.sets.get(name)) {
                (Some(before), Some(set)) if upstream.same_settings(before) => {
                    upstream.update(before, set);
                    // Re-read: renewed CA or client certificate files.
                    let set = set.clone().tls(
                        backend_tls
                            .clone()
                            .unwrap_or_else(wsproxy::tls::BackendTls::new),
                    );
                    Some(set)
                }
                _ => None,
            };
            let set = match kept_set {
                Some(set) => set,
                None => {
                    if old.upstreams.contains_key(name) {
                        tracing::warn!(
                            upstream = %name,
                            "its settings changed: a new backend set takes new handshakes; \
                             open tunnels stay with the old one, and load counts, health and \
                             (without sticky.secret) sticky cookies start afresh"
                        );
                    }
                    app::set(upstream, backend_tls.as_ref())
                }
            };
            sets.insert(name.clone(), set);
        }
        let app = app::app(&config, &sets, &self.tunnels, &mut self.limiters);
        // Nothing can fail from here: swap.
        for (serving, key) in self.certificates.iter().zip(certificates) {
            if let (Some(serving), Some(key)) = (serving, key) {
                serving.replace(key);
            }
        }
        self.app.store(Arc::new(app));
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
