//! The daemons' small HTTP/1.1 endpoints on hyper (the supervisor's
//! monitor, the `/metrics` listeners): one request per connection, a cap on
//! connections, a bounded head and body, and timeouts for the head (a
//! slowloris client is dropped), the body and every write. Routing is the
//! caller's: a function from a request with its whole, bounded body to a
//! response. TLS, if any, is the caller's `upgrade` of each TCP stream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};

pub use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// A request with its whole body.
pub type HttpRequest = Request<Bytes>;
/// A response with its whole body.
pub type HttpResponse = Response<Full<Bytes>>;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once; more are closed at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; at least
    /// 8 KiB (hyper's smallest read buffer). Above it: 431.
    pub max_head: usize,
    /// Most header lines; above it: 431.
    pub max_headers: usize,
    /// Largest request body; above it: 413.
    pub max_body: usize,
    /// Time to send the whole head; a client slower than that is dropped.
    pub head_timeout: Duration,
    /// Time to send the body once the head is in; then 408.
    pub body_timeout: Duration,
    /// Time allowed for each write of the response.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 32,
            max_head: 8 * 1024,
            max_headers: 64,
            max_body: 4 * 1024,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, text: &str) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `listener` until `shutdown` completes: each TCP stream is
/// `upgrade`d (e.g. a TLS handshake; `None` drops it), then its one request
/// answered by `handler` (given the client's address).
pub async fn serve<U, UF, IO, H, HF>(
    listener: TcpListener,
    limits: Limits,
    upgrade: U,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    U: Fn(TcpStream, SocketAddr) -> UF + Send + Sync + 'static,
    UF: Future<Output = Option<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(HttpRequest, SocketAddr) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = HttpResponse> + Send,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let upgrade = Arc::new(upgrade);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Full: the connection is closed at once.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%addr, "connection refused: at the limit");
            continue;
        };
        let (upgrade, handler) = (upgrade.clone(), handler.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let Some(io) = upgrade(tcp, addr).await else {
                return;
            };
            let handler = move |req| handler(req, addr);
            if let Err(e) = serve_connection(io, limits, handler).await {
                debug!(%addr, "connection ended: {e}");
            }
        });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// One connection, one request, within `limits` (but the connection cap,
/// which is [`serve`]'s).
pub async fn serve_connection<IO, H, HF>(
    io: IO,
    limits: Limits,
    handler: H,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(HttpRequest) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = HttpResponse> + Send,
{
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(limits.write_timeout));
    let io = TokioIo::new(Box::pin(io));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            Ok::<_, Infallible>(match read_body(req, &limits).await {
                Ok(req) => handler(req).await,
                Err(refusal) => refusal,
            })
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head.max(8 * 1024))
        .max_header_size(limits.max_head)
        .max_headers(limits.max_headers)
        .keep_alive(false)
        .serve_connection(io, service)
        .await
}

/// The body, bounded in size and time; a refusal is the response to send.
async fn read_body(req: Request<Incoming>, limits: &Limits) -> Result<HttpRequest, HttpResponse> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    let body = Limited::new(body, limits.max_body).collect();
    match tokio::time::timeout(limits.body_timeout, body).await {
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "request timeout")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Ok(Err(_)) => Err(text(StatusCode::BAD_REQUEST, "malformed request body")),
        Ok(Ok(b)) => Ok(Request::from_parts(parts, b.to_bytes())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn echo(req: HttpRequest) -> HttpResponse {
        text(
            StatusCode::OK,
            &format!("{} {} {}", req.method(), req.uri().path(), req.body().len()),
        )
    }

    /// Sends `raw` over an in-memory pipe; returns what the server wrote.
    async fn exchange(raw: &[u8], limits: Limits) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve_connection(server, limits, echo));
        client.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let _ = task.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status(response: &str) -> &str {
        response.split(' ').nth(1).unwrap_or("")
    }

    #[tokio::test]
    async fn serves_one_request_with_its_body() {
        let r = exchange(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd",
            Limits::default(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("POST /x 4\n"), "{r}");
        let chunked = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(exchange(chunked, Limits::default())
            .await
            .ends_with("POST /c 3\n"));
    }

    #[tokio::test]
    async fn oversized_and_malformed_requests_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 16 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&exchange(&big, Limits::default()).await), "431");
        let many: String = (0..=64).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            status(&exchange(many.as_bytes(), Limits::default()).await),
            "431"
        );
        let declared = b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
        assert_eq!(status(&exchange(declared, Limits::default()).await), "413");
        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".to_vec();
        chunked.extend(std::iter::repeat_n(b'a', 0x2000));
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(status(&exchange(&chunked, Limits::default()).await), "413");
        for garbage in [
            &b"\x00\x01 nonsense\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        ] {
            assert_eq!(status(&exchange(garbage, Limits::default()).await), "400");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_is_dropped_after_the_head_timeout() {
        let limits = Limits::default();
        let (mut client, server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(serve_connection(server, limits, echo));
        // Half a head, then nothing: the paused clock jumps to the timeout.
        client.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(task.await.unwrap().is_err());
        let waited = started.elapsed();
        assert!(
            waited >= limits.head_timeout && waited < limits.head_timeout * 2,
            "{waited:?}"
        );
        // The same client, quick enough, is served.
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(serve_connection(server, limits, echo));
        client.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        tokio::time::sleep(limits.head_timeout / 2).await;
        client.write_all(b" a\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_gets_408() {
        let limits = Limits::default();
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(serve_connection(server, limits, echo));
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let _ = task.await.unwrap();
        assert_eq!(status(&String::from_utf8_lossy(&out)), "408");
    }

    #[tokio::test]
    async fn the_connection_cap_holds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            limits,
            |tcp, _| async move { Some(tcp) },
            |req, _| echo(req),
            async move {
                let _ = stopped.await;
            },
        ));
        // Two idle clients hold both slots (each sent part of a head, so
        // the server has accepted it and holds a permit).
        let mut idle = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            idle.push(c);
        }
        // A third is closed without an answer.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut out))
            .await
            .unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        // One idle client finishes: its slot frees, a new client is served.
        let mut first = idle.remove(0);
        first.write_all(b"\r\n").await.unwrap();
        let mut out = Vec::new();
        first.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            if !out.is_empty() {
                assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
                break;
            }
            // The finished connection's task may not have released its
            // slot yet: retry until it has (bounded).
            assert!(tokio::time::Instant::now() < deadline, "never served");
            tokio::task::yield_now().await;
        }
        drop(idle);
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
