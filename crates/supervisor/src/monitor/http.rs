//! The monitor's HTTP layer: the pure request routing (a request with its
//! whole body in, an [`Action`] out) and the responses with their security
//! headers. The transport — hyper, with the head, body, time and connection
//! limits — is `miostream_cli::http`'s; bad input is a 4xx, never a panic.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use miostream_cli::http::{HttpRequest, HttpResponse, Limits};

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

/// The monitor's transport limits (the connection cap is the config's).
pub fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        max_head: MAX_HEAD,
        max_headers: MAX_HEADERS,
        max_body: MAX_BODY,
        ..Limits::default()
    }
}

/// A response, before the headers every answer carries.
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
            headers: vec![("content-security-policy", csp)],
            body: page.replace("{{NONCE}}", nonce).into_bytes(),
        }
    }

    /// Adds a header (`name` in lower case).
    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The hyper response, with the headers every answer carries: no
    /// caching, no sniffing, no framing, no referrer; one request per
    /// connection.
    pub fn into_hyper(self) -> HttpResponse {
        let mut r = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        let fixed = [
            ("content-type", self.content_type),
            ("connection", "close"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ];
        for (name, value) in fixed {
            h.insert(name, HeaderValue::from_static(value));
        }
        for (name, value) in self.headers {
            // Our own names and values: a bad one is a bug, left out rather
            // than sent (never a panic).
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.append(n, v);
            }
        }
        r
    }
}

/// Values of header `name`, as text (values that are not are skipped).
fn header<'a>(req: &'a HttpRequest, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    req.headers()
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

/// A query parameter (no percent-decoding: tokens need none).
fn query_param<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request carries the token (`Authorization: Bearer TOKEN` or
/// the session cookie), compared in constant time.
pub fn authorized(req: &HttpRequest, token: &MonitorToken) -> bool {
    let bearer = header(req, "authorization").any(|v| {
        v.split_once(' ').is_some_and(|(scheme, cred)| {
            scheme.eq_ignore_ascii_case("bearer") && token.matches(cred.trim().as_bytes())
        })
    });
    let cookie = header(req, "cookie").any(|v| {
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
    /// `GET /metrics`: the Prometheus scrape.
    Metrics,
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
    Response::text(405, "method not allowed").with("allow", allow)
}

/// What [`route`] needs besides the request.
pub struct Context<'a> {
    /// The operators' token.
    pub token: &'a MonitorToken,
    /// The pages.
    pub pages: &'a Pages,
    /// This response's CSP nonce.
    pub nonce: &'a str,
    /// `[monitor] lab_controls`: whether failure injection is allowed.
    pub lab_controls: bool,
}

/// The refusal of `POST /api/inject` while `lab_controls` is off.
pub const INJECTION_OFF: &str =
    "failure injection is off: set lab_controls = true in [monitor] of the supervisor's config.toml";

/// Routes a request: pure, so every path is unit-tested.
pub fn route(req: &HttpRequest, cx: &Context<'_>) -> Action {
    let (token, pages, nonce) = (cx.token, cx.pages, cx.nonce);
    let authed = authorized(req, token);
    let method = req.method().as_str();
    let get = method == "GET";
    let unauthorized_json = || {
        Action::Respond(
            Response::json(401, r#"{"error":"unauthorized"}"#.into())
                .with("www-authenticate", "Bearer"),
        )
    };
    match req.uri().path() {
        // Probes for a load balancer or an orchestrator: no token, no
        // secrets. Alive: the process serves HTTP; ready: its hub answers.
        "/healthz" | "/readyz" if !get => Action::Respond(method_not_allowed("GET")),
        "/healthz" => Action::Respond(Response::text(200, "ok")),
        "/readyz" => Action::Ready,
        "/login" if !get => Action::Respond(method_not_allowed("GET")),
        "/login" => match query_param(req, "token") {
            Some(t) if token.matches(t.as_bytes()) => {
                Action::Respond(Response::text(303, "logged in").with("location", "/").with(
                    "set-cookie",
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
        "/metrics" if !get => Action::Respond(method_not_allowed("GET")),
        "/metrics" if !authed => unauthorized_json(),
        "/metrics" => Action::Metrics,
        "/api/inject" if method != "POST" => Action::Respond(method_not_allowed("POST")),
        "/api/inject" if !authed => unauthorized_json(),
        "/api/inject" if !cx.lab_controls => Action::Respond(Response::json(
            403,
            serde_json::json!({ "error": INJECTION_OFF }).to_string(),
        )),
        "/api/inject" => {
            // A cross-site form cannot send JSON without a CORS preflight,
            // which we never answer; SameSite=Strict is the first guard.
            let json = header(req, "content-type").any(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Action::Respond(Response::text(415, "send application/json"));
            }
            match InjectRequest::parse(req.body()) {
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

    /// A request from its head's text (well-formed: hyper parsed it).
    fn req(text: &str, body: &[u8]) -> HttpRequest {
        let mut lines = text.trim_end().split("\r\n");
        let mut first = lines.next().unwrap().split(' ');
        let mut b = hyper::Request::builder()
            .method(first.next().unwrap())
            .uri(first.next().unwrap());
        for line in lines {
            let (name, value) = line.split_once(':').unwrap();
            b = b.header(name, value.trim());
        }
        b.body(Bytes::copy_from_slice(body)).unwrap()
    }

    fn go_with(text: &str, body: &[u8], lab_controls: bool) -> Action {
        let token = token();
        let cx = Context {
            token: &token,
            pages: &PAGES,
            nonce: "N0NCE",
            lab_controls,
        };
        route(&req(text, body), &cx)
    }

    fn go(text: &str, body: &[u8]) -> Action {
        go_with(text, body, true)
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
        assert!(!r.headers.iter().any(|(n, _)| *n == "set-cookie"));
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
                .find(|(n, _)| *n == "content-security-policy")
                .unwrap()
                .1;
            assert!(csp.contains("script-src 'nonce-N0NCE'"), "{csp}");
        }
        let a = go(&format!("GET /login?token={TOKEN} HTTP/1.1\r\n\r\n"), b"");
        let Action::Respond(r) = &a else { panic!() };
        assert_eq!(r.status, 303);
        let header = |n: &str| r.headers.iter().find(|(h, _)| *h == n).unwrap().1.clone();
        assert_eq!(header("location"), "/");
        let cookie = header("set-cookie");
        for part in [
            &format!("{COOKIE}={TOKEN}")[..],
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let h = r.clone().into_hyper();
        assert_eq!(h.status(), 303);
        for (name, value) in [
            ("connection", "close"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("location", "/"),
        ] {
            assert_eq!(h.headers()[name], value, "{name}");
        }
    }

    #[test]
    fn metrics_need_the_token_and_injection_needs_lab_controls() {
        let auth = format!("Authorization: Bearer {TOKEN}");
        assert_eq!(status(&go("GET /metrics HTTP/1.1\r\n\r\n", b"")), 401);
        assert_eq!(
            go(&format!("GET /metrics HTTP/1.1\r\n{auth}\r\n\r\n"), b""),
            Action::Metrics
        );
        let inject = format!(
            "POST /api/inject HTTP/1.1\r\n{auth}\r\nContent-Type: application/json\r\n\r\n"
        );
        let a = go_with(&inject, br#"{"rate": 1}"#, false);
        let Action::Respond(r) = &a else {
            panic!("{a:?}")
        };
        assert_eq!(r.status, 403);
        assert!(String::from_utf8_lossy(&r.body).contains("lab_controls = true"));
        assert!(matches!(
            go_with(&inject, br#"{"rate": 1}"#, true),
            Action::Inject(_)
        ));
        // Without the token it is still 401, not a hint that controls exist.
        let anon = "POST /api/inject HTTP/1.1\r\nContent-Type: application/json\r\n\r\n";
        assert_eq!(status(&go_with(anon, br#"{"rate": 1}"#, false)), 401);
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
