//! Embedded backends for `--demo`: an echo server and a chat room.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::upstream::{BackendSpec, UpstreamConfig};
use crate::config::{Config, RouteConfig};

/// The addresses of the embedded backends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backends {
    /// The echo backend: sends every text or binary message back.
    pub(crate) echo: SocketAddr,
    /// The chat backend: broadcasts every text message to all clients.
    pub(crate) chat: SocketAddr,
}

/// Route `/echo` and `/chat` (prefix stripped) to the demo backends.
pub(crate) fn add_routes(config: &mut Config, backends: Backends) {
    for (prefix, addr) in [("/echo", backends.echo), ("/chat", backends.chat)] {
        let upstream = format!("demo{prefix}");
        let url = format!("ws://{addr}/").parse().expect("a loopback URL");
        config.routes.push(RouteConfig {
            prefix: prefix.to_owned(),
            host: None,
            upstream: upstream.clone(),
            strip_prefix: true,
            rewrite_prefix: None,
            host_header: None,
        });
        let backend = BackendSpec {
            upstream: url,
            weight: None,
            max_conns: None,
            backup: false,
        };
        config
            .upstreams
            .insert(upstream, UpstreamConfig::new(vec![backend]));
    }
}

/// Start the echo and chat backends on loopback; they stop when `stop` is
/// cancelled, and every task they start is tracked by `tasks`.
pub(crate) async fn start(
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> std::io::Result<Backends> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let chat = TcpListener::bind("127.0.0.1:0").await?;
    let backends = Backends {
        echo: echo.local_addr()?,
        chat: chat.local_addr()?,
    };
    let (room, _) = broadcast::channel::<String>(256);
    tasks.spawn(accept_loop(echo, tasks.clone(), stop.clone(), echo_session));
    tasks.spawn(accept_loop(chat, tasks.clone(), stop, move |stream| {
        chat_session(stream, room.clone())
    }));
    Ok(backends)
}

/// Accept on `listener` and run `session` on each connection, until `stop`.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    tasks: TaskTracker,
    stop: CancellationToken,
    session: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let stop = stop.clone();
                    let session = session(stream);
                    tasks.spawn(async move {
                        tokio::select! {
                            () = session => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "demo backend accept failed"),
            },
            () = stop.cancelled() => return,
        }
    }
}

/// One echo client: every text or binary message goes back.
async fn echo_session(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// One chat client: its text messages go to the room, the room's to it.
async fn chat_session(stream: TcpStream, room: broadcast::Sender<String>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let mut heard = room.subscribe();
    loop {
        tokio::select! {
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let _ = room.send(text.as_str().to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            said = heard.recv() => match said {
                Ok(text) => {
                    if tx.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
