//! The text access log: one line per WebSocket handshake and per plain
//! request, in nginx's `combined` format followed by what a WebSocket
//! adds, so that the tools that read nginx's logs (GoAccess, fail2ban,
//! awk one-liners) read these too:
//!
//! ```text
//! 127.0.0.1 - - [02/Dec/2026:15:40:01 +0000] "GET /chat/room?<redacted> HTTP/1.1" 101 1432 "-" "Mozilla/5.0 …" rt=12.004 route=/chat upstream=ws://10.0.0.7:9000/ subprotocol="chat.v2" origin="https://app.example" bytes_up=210 client_close=1000 backend_close=1000 end="client closed first"
//! ```
//!
//! A handshake that opened a tunnel is logged when the tunnel ends (as
//! nginx logs a WebSocket: status `101`, the bytes sent to the client,
//! the time from the request to the end); a refused one when it is
//! answered; one whose client went away before an answer with `499`, as
//! nginx does. The time is UTC. The client is the address the trusted
//! proxies vouched for, else the peer's.
//!
//! It is a [`tracing_subscriber::Layer`] reading the library's `tunnel`
//! span (and the `request` span of `app::Plain`'s requests): the library
//! stays free of any log format, and `--log-format json` logs the same
//! fields as JSON events instead.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The layer: writes each access line to `writer`.
pub(crate) struct AccessLog<W> {
    writer: W,
}

impl<W> AccessLog<W> {
    pub(crate) fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// Whether `metadata` is something the access log reads: the spans it
/// logs, the events inside them with their outcome (and a refusal's
/// reason), and the refusals of admission checks in front of the proxy.
pub(crate) fn is_access(metadata: &tracing::Metadata<'_>) -> bool {
    if metadata.is_span() {
        return kind(metadata).is_some();
    }
    is_outcome_event(metadata) || metadata.fields().field("status").is_some()
}

/// The events the access line says all of, which the text log then
/// leaves out: a tunnel's end, a plain request's response, an admission
/// check's refusal.
pub(crate) fn is_outcome_event(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_event()
        && (metadata.fields().field("bytes_up").is_some()
            || metadata.target() == "tower_http::trace::on_response"
            || is_admission_refusal(metadata))
}

/// A handshake refused by an admission check in front of the proxy (no
/// span of its own: the event is the whole story).
fn is_admission_refusal(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target().starts_with("wsproxy::admit") && metadata.fields().field("status").is_some()
}

/// The two kinds of span logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A WebSocket handshake and its tunnel (the library's `tunnel` span).
    Tunnel,
    /// A plain request (the gateway's `request` span).
    Request,
    /// A handshake an admission check refused (an event).
    Refused,
}

fn kind(metadata: &tracing::Metadata<'_>) -> Option<Kind> {
    match metadata.name() {
        "tunnel" if metadata.target().starts_with("wsproxy") => Some(Kind::Tunnel),
        "request" if metadata.target().starts_with("wsgate") => Some(Kind::Request),
        _ => None,
    }
}

/// What a logged span gathered: its fields, and those of the outcome
/// events inside it.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    /// When the span opened: the request's arrival.
    started: std::time::Instant,
    /// Each field's name and where its text lies in `text` (one buffer,
    /// not a string each).
    fields: Vec<(&'static str, std::ops::Range<usize>)>,
    text: String,
}

impl Entry {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            started: std::time::Instant::now(),
            fields: Vec::with_capacity(20),
            text: String::with_capacity(256),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        // The last value recorded wins.
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, range)| &self.text[range.clone()])
    }

    /// Record `name` as what `write` writes.
    fn push(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        write(&mut self.text);
        self.fields.push((name, start..self.text.len()));
    }
}

impl Visit for Entry {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() != "message" {
            self.push(field.name(), |text| {
                let _ = write!(text, "{value:?}");
            });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), |text| text.push_str(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), |text| {
            let _ = write!(text, "{value}");
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), |text| {
            let _ = write!(text, "{value}");
        });
    }
}

impl<S, W> Layer<S> for AccessLog<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(kind) = kind(attrs.metadata()) else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        let mut entry = Entry::new(kind);
        attrs.record(&mut entry);
        span.extensions_mut().insert(entry);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(entry) = span.extensions_mut().get_mut::<Entry>()
        {
            values.record(entry);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if is_admission_refusal(event.metadata()) {
            let mut entry = Entry::new(Kind::Refused);
            event.record(&mut entry);
            self.write(&entry);
            return;
        }
        if let Some(span) = ctx.event_span(event)
            && let Some(entry) = span.extensions_mut().get_mut::<Entry>()
        {
            event.record(entry);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(entry) = span.extensions_mut().remove::<Entry>() else {
            return;
        };
        self.write(&entry);
    }
}

impl<W: for<'w> MakeWriter<'w>> AccessLog<W> {
    fn write(&self, entry: &Entry) {
        let elapsed = entry.started.elapsed();
        let mut line = line(entry, time::OffsetDateTime::now_utc(), elapsed);
        line.push('\n');
        // One write per line: appends from several threads stay whole.
        let _ = self.writer.make_writer().write_all(line.as_bytes());
    }
}

/// `[02/Dec/2026:15:40:01 +0000]`, nginx's `$time_local` (in UTC).
const TIME: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
);

/// `now` as `$time_local` writes it, formatted once a second per thread
/// (as nginx caches its time strings).
fn formatted(now: time::OffsetDateTime) -> String {
    std::thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    LAST.with_borrow_mut(|(second, text)| {
        let this = now.unix_timestamp();
        if *second != this {
            *text = now.format(TIME).unwrap_or_else(|_| "-".to_owned());
            *second = this;
        }
        text.clone()
    })
}

/// The access line of `entry`, at `now`, `elapsed` after the request
/// arrived.
fn line(entry: &Entry, now: time::OffsetDateTime, elapsed: std::time::Duration) -> String {
    let field = |name| entry.get(name).filter(|v| !v.is_empty() && *v != "-");
    let or_dash = |name| field(name).unwrap_or("-");
    // The client vouched for by trusted proxies, else the peer, without
    // its port (nginx's `$remote_addr`).
    let client = field("client_ip")
        .map(str::to_owned)
        .or_else(|| {
            field("client").map(|peer| {
                peer.parse::<std::net::SocketAddr>()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_else(|_| peer.to_owned())
            })
        })
        .unwrap_or_else(|| "-".to_owned());
    let time = formatted(now);
    let version = match field("http").or(field("version")) {
        Some("2") | Some("HTTP/2.0") => "HTTP/2.0",
        // Only an HTTP/2 handshake is a CONNECT (RFC 8441).
        None if field("method") == Some("CONNECT") => "HTTP/2.0",
        Some("HTTP/1.0") => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    // No answer: the client went away first (nginx's 499).
    let status = field("status").unwrap_or("499");
    // nginx's `$request_time`: seconds, to the millisecond (unknown for
    // an admission check's refusal, an event without a span).
    let rt = if entry.kind == Kind::Refused {
        "-".to_owned()
    } else {
        format!("{}.{:03}", elapsed.as_secs(), elapsed.subsec_millis())
    };
    let mut line = format!(
        "{client} - - [{time}] \"{} {} {version}\" {status} {} \"{}\" \"{}\" rt={rt}",
        Escaped(or_dash("method")),
        Escaped(or_dash("path")),
        or_dash("bytes_down"),
        Escaped(or_dash("referer")),
        Escaped(or_dash("user_agent")),
    );
    if let Some(reason) = field("reason") {
        let _ = write!(line, " reason=\"{}\"", Escaped(reason));
    }
    if entry.kind == Kind::Tunnel {
        for name in ["route", "upstream"] {
            if let Some(value) = field(name) {
                let _ = write!(line, " {name}={value}");
            }
        }
        // The backend's word, which may echo the client's: quoted.
        if let Some(subprotocol) = field("subprotocol") {
            let _ = write!(line, " subprotocol=\"{}\"", Escaped(subprotocol));
        }
        if let Some(origin) = field("origin") {
            let _ = write!(line, " origin=\"{}\"", Escaped(origin));
        }
        for name in ["bytes_up", "client_close", "backend_close"] {
            if let Some(value) = field(name) {
                let _ = write!(line, " {name}={value}");
            }
        }
        if let Some(end) = field("end") {
            let _ = write!(line, " end=\"{}\"", Escaped(end));
        }
    }
    line
}

/// A value inside double quotes: `"` and `\` escaped, control characters
/// as `\xHH` (nginx's `escape=default`), so that a client cannot forge a
/// field or a line.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Runs of characters that need nothing are written whole.
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found there");
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c => write!(f, "\\x{:02X}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, fields: &[(&'static str, &str)]) -> Entry {
        let mut entry = Entry::new(kind);
        for (name, value) in fields {
            entry.push(name, |text| text.push_str(value));
        }
        entry
    }

    fn ms(ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(ms)
    }

    fn at() -> time::OffsetDateTime {
        time::macros::datetime!(2026-12-02 15:40:01 UTC)
    }

    #[test]
    fn a_tunnel_is_a_combined_line_and_what_a_websocket_adds() {
        let entry = entry(
            Kind::Tunnel,
            &[
                ("client", "127.0.0.1:50000"),
                ("http", "1.1"),
                ("method", "GET"),
                ("path", "/chat/room?<redacted>"),
                ("route", "/chat"),
                ("origin", "https://app.example"),
                ("user_agent", "Mozilla/5.0 \"x\""),
                ("upstream", "ws://10.0.0.7:9000/"),
                ("status", "101"),
                ("subprotocol", "chat.v2"),
                ("duration_ms", "12004"),
                ("bytes_up", "210"),
                ("bytes_down", "1432"),
                ("client_close", "1000"),
                ("backend_close", "1000"),
                ("end", "client closed first"),
            ],
        );
        assert_eq!(
            line(&entry, at(), ms(12004)),
            "127.0.0.1 - - [02/Dec/2026:15:40:01 +0000] \"GET /chat/room?<redacted> HTTP/1.1\" \
             101 1432 \"-\" \"Mozilla/5.0 \\\"x\\\"\" rt=12.004 route=/chat \
             upstream=ws://10.0.0.7:9000/ subprotocol=\"chat.v2\" origin=\"https://app.example\" \
             bytes_up=210 client_close=1000 backend_close=1000 end=\"client closed first\""
        );
    }

    #[test]
    fn a_refusal_an_abandoned_handshake_and_a_vouched_client() {
        let refused = entry(
            Kind::Tunnel,
            &[
                ("client", "[::1]:50000"),
                ("client_ip", "203.0.113.9"),
                ("http", "2"),
                ("method", "CONNECT"),
                ("path", "/chat"),
                ("user_agent", "-"),
                ("status", "403"),
            ],
        );
        assert_eq!(
            line(&refused, at(), ms(3)),
            "203.0.113.9 - - [02/Dec/2026:15:40:01 +0000] \"CONNECT /chat HTTP/2.0\" 403 - \"-\" \"-\" rt=0.003"
        );
        let abandoned = entry(
            Kind::Tunnel,
            &[("client", "[::1]:50000"), ("method", "GET"), ("path", "/")],
        );
        assert!(
            line(&abandoned, at(), ms(3))
                .starts_with("::1 - - [02/Dec/2026:15:40:01 +0000] \"GET / HTTP/1.1\" 499 -"),
            "{}",
            line(&abandoned, at(), ms(3))
        );
    }

    #[test]
    fn an_admission_refusal_has_its_reason() {
        let refused = entry(
            Kind::Refused,
            &[
                ("status", "429"),
                ("reason", "connection limit per client reached"),
                ("method", "GET"),
                ("path", "/chat"),
                ("client", "127.0.0.1:4000"),
                ("user_agent", "ua"),
            ],
        );
        assert_eq!(
            line(&refused, at(), ms(0)),
            "127.0.0.1 - - [02/Dec/2026:15:40:01 +0000] \"GET /chat HTTP/1.1\" 429 - \"-\" \"ua\" \
             rt=- reason=\"connection limit per client reached\""
        );
    }

    #[test]
    fn a_client_cannot_forge_a_field_or_a_line() {
        let entry = entry(
            Kind::Request,
            &[
                ("method", "GET"),
                ("path", "/"),
                ("user_agent", "a\" 200 \"\n127.0.0.2 - -"),
                ("status", "200"),
            ],
        );
        let line = line(&entry, at(), ms(3));
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.ends_with("\"a\\\" 200 \\\"\\x0A127.0.0.2 - -\" rt=0.003"),
            "{line}"
        );
    }
}
