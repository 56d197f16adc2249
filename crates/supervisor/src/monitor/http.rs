//! A deliberately small HTTP/1.1 subset for the monitor: one request per
//! connection (`Connection: close`), a bounded head, a bounded
//! `Content-Length` body (no chunked uploads), and pure request routing.
//! Bad input is a 4xx response, never a panic.

use crate::monitor::api::InjectRequest;
use crate::state::MonitorToken;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;
/// The session cookie's name.
pub const COOKIE: &str = "miostream_monitor";

/// A request head that is not acceptable: the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400: not HTTP as we speak it.
    Malformed,
    /// 413: a body above [`MAX_BODY`].
    BodyTooLarge,
    /// 431: a head above [`MAX_HEAD`] or too many headers.
    HeadTooLarge,
    /// 501: a transfer encoding (chunked bodies are not supported).
    NotImplemented,
    /// 505: not HTTP/1.0 or 1.1.
    Version,
}

impl HttpError {
    /// The response for it.
    pub fn response(self) -> Response {
        let (status, text) = match self {
            Self::Malformed => (400, "malformed request"),
            Self::BodyTooLarge => (413, "request body too large"),
            Self::HeadTooLarge => (431, "request head too large"),
            Self::NotImplemented => (501, "transfer encodings are not supported"),
            Self::Version => (505, "HTTP/1.1 only"),
        };
        Response::text(status, text)
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (after `?`), if any.
    pub query: Option<String>,
    /// Header names (lower case) and values (trimmed).
    pub headers: Vec<(String, String)>,
    /// The body's length.
    pub content_length: usize,
}

impl Request {
    /// Values of header `name` (lower case).
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter (no percent-decoding: tokens need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// The length of the head in `buf` (through the blank line), once complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a complete head (as delimited by [`head_len`]).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    if head.len() > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed)?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(HttpError::Malformed)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    if !is_token(method)
        || !target.starts_with('/')
        || target.bytes().any(|b| b <= b' ' || b >= 0x7f)
    {
        return Err(HttpError::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(if version.starts_with("HTTP/") {
            HttpError::Version
        } else {
            HttpError::Malformed
        });
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        // No obsolete line folding, no control characters.
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        if !is_token(name) || value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(HttpError::Malformed);
        }
        let name = name.to_ascii_lowercase();
        let value = value.trim_matches([' ', '\t']).to_owned();
        match name.as_str() {
            "content-length" => {
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(HttpError::Malformed)?;
                if content_length.replace(n).is_some_and(|m| m != n) {
                    return Err(HttpError::Malformed);
                }
            }
            "transfer-encoding" => return Err(HttpError::NotImplemented),
            _ => {}
        }
        headers.push((name, value));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        headers,
        content_length,
    })
}

/// A response (always `Connection: close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: format!("{text}\n").into_bytes(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// An HTML page whose inline script and style carry `nonce`, allowed by
    /// its Content-Security-Policy (nothing else is: no other origin, no
    /// inline event handlers).
    pub fn html(status: u16, page: &str, nonce: &str) -> Self {
        let csp = format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            headers: vec![("Content-Security-Policy", csp)],
            body: page.replace("{{NONCE}}", nonce).into_bytes(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
             X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Whether the request carries the token (`Authorization: Bearer TOKEN` or
/// the session cookie), compared in constant time.
pub fn authorized(req: &Request, token: &MonitorToken) -> bool {
    let bearer = req.header("authorization").any(|v| {
        v.split_once(' ').is_some_and(|(scheme, cred)| {
            scheme.eq_ignore_ascii_case("bearer") && token.matches(cred.trim().as_bytes())
        })
    });
    let cookie = req.header("cookie").any(|v| {
        v.split(';')
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && token.matches(value.as_bytes()))
    });
    bearer || cookie
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer this.
    Respond(Response),
    /// Answer with `GET /api/state`.
    State,
    /// Apply this to the injector and answer with its state.
    Inject(InjectRequest),
    /// `GET /readyz`: 200 if the hub answers, 503 if not.
    Ready,
}

/// The pages, with `{{NONCE}}` where the CSP nonce goes.
pub struct Pages {
    /// The dashboard.
    pub dashboard: &'static str,
    /// The login form; `{{MESSAGE}}` is replaced by a fixed text.
    pub login: &'static str,
}

fn login_page(pages: &Pages, status: u16, message: &str, nonce: &str) -> Response {
    Response::html(status, &pages.login.replace("{{MESSAGE}}", message), nonce)
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::text(405, "method not allowed").with("Allow", allow)
}

/// Routes a request: pure, so every path is unit-tested.
pub fn route(
    req: &Request,
    body: &[u8],
    token: &MonitorToken,
    pages: &Pages,
    nonce: &str,
) -> Action {
    let authed = authorized(req, token);
    let get = req.method == "GET";
    let unauthorized_json = || {
        Action::Respond(
            Response::json(401, r#"{"error":"unauthorized"}"#.into())
                .with("WWW-Authenticate", "Bearer"),
        )
    };
    match req.path.as_str() {
        // Probes for a load balancer or an orchestrator: no token, no
        // secrets. Alive: the process serves HTTP; ready: its hub answers.
        "/healthz" | "/readyz" if !get => Action::Respond(method_not_allowed("GET")),
        "/healthz" => Action::Respond(Response::text(200, "ok")),
        "/readyz" => Action::Ready,
        "/login" if !get => Action::Respond(method_not_allowed("GET")),
        "/login" => match req.query_param("token") {
            Some(t) if token.matches(t.as_bytes()) => {
                Action::Respond(Response::text(303, "logged in").with("Location", "/").with(
                    "Set-Cookie",
                    format!("{COOKIE}={t}; Path=/; HttpOnly; Secure; SameSite=Strict"),
                ))
            }
            Some(_) => Action::Respond(login_page(pages, 401, "Wrong token.", nonce)),
            None => Action::Respond(login_page(pages, 401, "", nonce)),
        },
        "/" if !get => Action::Respond(method_not_allowed("GET")),
        "/" if !authed => Action::Respond(login_page(pages, 401, "", nonce)),
        "/" => Action::Respond(Response::html(200, pages.dashboard, nonce)),
        "/api/state" if !get => Action::Respond(method_not_allowed("GET")),
        "/api/state" if !authed => unauthorized_json(),
        "/api/state" => Action::State,
        "/api/inject" if req.method != "POST" => Action::Respond(method_not_allowed("POST")),
        "/api/inject" if !authed => unauthorized_json(),
        "/api/inject" => {
            // A cross-site form cannot send JSON without a CORS preflight,
            // which we never answer; SameSite=Strict is the first guard.
            let json = req.header("content-type").any(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Action::Respond(Response::text(415, "send application/json"));
            }
            match InjectRequest::parse(body) {
                Ok(r) => Action::Inject(r),
                Err(e) => Action::Respond(Response::json(
                    400,
                    serde_json::json!({ "error": e }).to_string(),
                )),
            }
        }
        _ => Action::Respond(Response::text(404, "not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const PAGES: Pages = Pages {
        dashboard: "<script nonce=\"{{NONCE}}\">dash</script>",
        login: "<p>{{MESSAGE}}</p><form nonce=\"{{NONCE}}\"></form>",
    };

    fn token() -> MonitorToken {
        MonitorToken::parse(TOKEN).unwrap()
    }

    fn req(text: &str) -> Result<Request, HttpError> {
        let bytes = text.as_bytes();
        let n = head_len(bytes).ok_or(HttpError::Malformed)?;
        parse_head(&bytes[..n])
    }

    fn go(text: &str, body: &[u8]) -> Action {
        route(&req(text).unwrap(), body, &token(), &PAGES, "N0NCE")
    }

    fn status(a: &Action) -> u16 {
        match a {
            Action::Respond(r) => r.status,
            _ => 200,
        }
    }

    #[test]
    fn health_and_readiness_need_no_token() {
        let a = go("GET /healthz HTTP/1.1\r\n\r\n", b"");
        assert!(matches!(&a, Action::Respond(r) if r.status == 200), "{a:?}");
        assert_eq!(go("GET /readyz HTTP/1.1\r\n\r\n", b""), Action::Ready);
        assert_eq!(status(&go("POST /healthz HTTP/1.1\r\n\r\n", b"")), 405);
        assert_eq!(status(&go("POST /readyz HTTP/1.1\r\n\r\n", b"")), 405);
    }

    #[test]
    fn parses_a_request() {
        let r = req("GET /login?token=abc&x=1 HTTP/1.1\r\nHost: a\r\nCookie: a=b\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/login");
        assert_eq!(r.query_param("token"), Some("abc"));
        assert_eq!(r.query_param("x"), Some("1"));
        assert_eq!(r.query_param("y"), None);
        assert_eq!(r.header("cookie").collect::<Vec<_>>(), ["a=b"]);
        assert_eq!(r.content_length, 0);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn malformed_heads_are_4xx_or_5xx_never_panics() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"\r\n\r\n", HttpError::Malformed),
            (b"GET\r\n\r\n", HttpError::Malformed),
            (b"GET / HTTP/1.1 extra\r\n\r\n", HttpError::Malformed),
            (b"GET  / HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (b"G@T / HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (b"GET / HTTP/2.0\r\n\r\n", HttpError::Version),
            (b"GET / FTP/1.0\r\n\r\n", HttpError::Malformed),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", HttpError::Malformed),
            (
                b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
                HttpError::Malformed,
            ),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", HttpError::Malformed),
            (b"GET /\xff HTTP/1.1\r\n\r\n", HttpError::Malformed),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::Malformed,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
                HttpError::BodyTooLarge,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::NotImplemented,
            ),
            (b"GET / HTTP/1.1\r\n", HttpError::Malformed),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_head(head),
                Err(*want),
                "{}",
                String::from_utf8_lossy(head)
            );
            let r = want.response();
            assert!(r.status >= 400, "{}", r.status);
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HttpError::HeadTooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(req(&big), Err(HttpError::HeadTooLarge));
        // Arbitrary bytes: an error or a request, never a panic.
        let mut seed = 7u32;
        for _ in 0..2000 {
            let mut b: Vec<u8> = b"GET / HTTP/1.1\r\nA: b\r\n\r\n".to_vec();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed >> 8) as usize % b.len();
                b[i] = (seed >> 16) as u8;
            }
            let _ = parse_head(&b);
        }
    }

    #[test]
    fn unauthenticated_requests_get_401_and_the_login_form() {
        let a = go("GET / HTTP/1.1\r\n\r\n", b"");
        let Action::Respond(r) = &a else { panic!() };
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).contains("<form"));
        assert_eq!(status(&go("GET /api/state HTTP/1.1\r\n\r\n", b"")), 401);
        assert_eq!(
            status(&go(
                "POST /api/inject HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n",
                br#"{"rate": 0}"#
            )),
            401
        );
    }

    #[test]
    fn wrong_tokens_are_refused() {
        let wrong = "0123456789abcdef0123456789abcdee";
        for h in [
            format!("Authorization: Bearer {wrong}"),
            format!("Authorization: Basic {TOKEN}"),
            format!("Authorization: Bearer {TOKEN}x"),
            format!("Authorization: Bearer {}", &TOKEN[1..]),
            "Authorization: Bearer".to_string(),
            format!("Cookie: {COOKIE}={wrong}"),
            format!("Cookie: other={TOKEN}"),
            format!("Cookie: {COOKIE}x={TOKEN}"),
            format!("X-Token: {TOKEN}"),
        ] {
            let a = go(&format!("GET /api/state HTTP/1.1\r\n{h}\r\n\r\n"), b"");
            assert_eq!(status(&a), 401, "{h}");
        }
        let a = go(&format!("GET /login?token={wrong} HTTP/1.1\r\n\r\n"), b"");
        let Action::Respond(r) = &a else { panic!() };
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).contains("Wrong token."));
        assert!(!r.headers.iter().any(|(n, _)| *n == "Set-Cookie"));
    }

    #[test]
    fn the_token_opens_everything() {
        for h in [
            format!("Authorization: Bearer {TOKEN}"),
            format!("authorization: bearer  {TOKEN} "),
            format!("Cookie: a=b; {COOKIE}={TOKEN}; c=d"),
        ] {
            let a = go(&format!("GET /api/state HTTP/1.1\r\n{h}\r\n\r\n"), b"");
            assert_eq!(a, Action::State, "{h}");
            let a = go(&format!("GET / HTTP/1.1\r\n{h}\r\n\r\n"), b"");
            let Action::Respond(r) = &a else { panic!() };
            assert_eq!(r.status, 200);
            assert_eq!(r.body, b"<script nonce=\"N0NCE\">dash</script>");
            let csp = &r
                .headers
                .iter()
                .find(|(n, _)| *n == "Content-Security-Policy")
                .unwrap()
                .1;
            assert!(csp.contains("script-src 'nonce-N0NCE'"), "{csp}");
        }
        let a = go(&format!("GET /login?token={TOKEN} HTTP/1.1\r\n\r\n"), b"");
        let Action::Respond(r) = &a else { panic!() };
        assert_eq!(r.status, 303);
        let header = |n: &str| r.headers.iter().find(|(h, _)| *h == n).unwrap().1.clone();
        assert_eq!(header("Location"), "/");
        let cookie = header("Set-Cookie");
        for part in [
            &format!("{COOKIE}={TOKEN}")[..],
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let bytes = String::from_utf8(r.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 303 See Other\r\n"), "{bytes}");
        assert!(bytes.contains("Connection: close\r\n"));
    }

    #[test]
    fn inject_needs_post_json_and_a_valid_body() {
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        let post = |ct: &str, body: &[u8]| {
            go(
                &format!(
                    "POST /api/inject HTTP/1.1\r\n{auth}Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ),
                body,
            )
        };
        assert_eq!(
            post(
                "application/json",
                br#"{"rate": 2, "distribution": "poisson", "seed": 9}"#
            ),
            Action::Inject(InjectRequest {
                rate: 2.0,
                distribution: Some(miostream_topology::FailureDistribution::Poisson),
                seed: Some(9),
            })
        );
        assert_eq!(
            post("application/json; charset=utf-8", br#"{"rate": 0}"#),
            Action::Inject(InjectRequest {
                rate: 0.0,
                distribution: None,
                seed: None
            })
        );
        assert_eq!(status(&post("text/plain", br#"{"rate": 0}"#)), 415);
        assert_eq!(
            status(&post("application/x-www-form-urlencoded", b"rate=1")),
            415
        );
        assert_eq!(status(&post("application/json", br#"{"rate": -2}"#)), 400);
        assert_eq!(status(&post("application/json", b"{")), 400);
        assert_eq!(
            status(&go(&format!("GET /api/inject HTTP/1.1\r\n{auth}\r\n"), b"")),
            405
        );
        assert_eq!(
            status(&go(&format!("POST /api/state HTTP/1.1\r\n{auth}\r\n"), b"")),
            405
        );
        assert_eq!(
            status(&go(&format!("GET /nope HTTP/1.1\r\n{auth}\r\n"), b"")),
            404
        );
        assert_eq!(status(&go("GET /favicon.ico HTTP/1.1\r\n\r\n", b"")), 404);
    }
}
