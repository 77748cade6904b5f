//! The pooling HTTP/1.1 client that the sub-requests to an auth service
//! and JWKS fetches go out on: hyper-util's, connections reused,
//! `TCP_NODELAY`, a bound on each connect.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooling client whose request bodies are `B`.
pub(crate) type Pooling<B> = Client<HttpConnector, B>;

/// A pooling client; a connect takes at most `connect_timeout`.
pub(crate) fn client<B>(connect_timeout: Duration) -> Pooling<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}
