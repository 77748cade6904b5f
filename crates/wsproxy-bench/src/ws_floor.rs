//! `ws-floor`: the least a WebSocket proxy built on hyper's server can do
//! for a handshake, the floor under wsgate (which keeps hyper's server,
//! as the issues prescribe, and adds validation, routing, forwarding
//! headers, admission, timeouts, a frame-aware relay, drain, logs and
//! metrics). `compare --floor` runs it beside wsgate, nginx and HAProxy.
//!
//! Threaded as wsgate is (`http::per_core`). A request is sent to the backend as
//! hyper parsed it (its head written in one piece on a fresh TCP
//! connection, no header changed), the answer's head read with
//! `httparse` and returned as it is; after a `101`, the bytes pass both
//! ways with tokio's `copy_bidirectional` (what the issue's "minimal tokio
//! proxy" does, with hyper in front). No checks, no timeouts, no logs.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Serve until killed.
pub(crate) async fn run(
    listen: SocketAddr,
    backend: SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    crate::http::per_core(listen, move |tcp| connection(tcp, backend)).await
}

/// One client connection.
async fn connection(tcp: TcpStream, backend: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| handshake(request, backend));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades()
        .await;
}

/// One request: the backend's answer, and after a `101` the relay.
async fn handshake(
    mut request: Request<Incoming>,
    backend: SocketAddr,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let bad_gateway = || {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    };
    let Ok(mut upstream) = TcpStream::connect(backend).await else {
        return Ok(bad_gateway());
    };
    let _ = upstream.set_nodelay(true);
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if upstream.write_all(&head).await.is_err() {
        return Ok(bad_gateway());
    }
    let mut buf = BytesMut::with_capacity(4096);
    let (mut response, len) = loop {
        match upstream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(bad_gateway()),
            Ok(_) => {}
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut response = Response::new(Empty::new());
                *response.status_mut() = StatusCode::from_u16(parsed.code.unwrap_or(502))
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                for field in parsed.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(field.name.as_bytes()),
                        HeaderValue::from_bytes(field.value),
                    ) {
                        response.headers_mut().append(name, value);
                    }
                }
                break (response, len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Ok(bad_gateway()),
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let early = buf.split_off(len);
        let client = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(client) = client.await else { return };
            let mut client = TokioIo::new(client);
            if !early.is_empty() && client.write_all(&early).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    } else {
        // A refusal's body is not relayed: the floor is for handshakes.
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    Ok(response)
}
