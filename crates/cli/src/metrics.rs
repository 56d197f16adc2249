//! `/metrics` in the Prometheus text format (0.0.4), through
//! prometheus-client. A [`Scrape`] is built afresh from a snapshot of the
//! daemon's figures at each request, so its values are the snapshot's and
//! nothing lingers of peers or streams that are gone; live counters kept
//! elsewhere are registered into it as they are. [`route`] is the plain,
//! token-less listener's routing (`/metrics`, `/healthz`, `/readyz`, and
//! nothing else), shared by the supervisor's `[metrics] listen` and the
//! receiver's `--metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use crate::http::{text, HttpRequest, HttpResponse};

pub use prometheus_client;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label names and values of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// A gauge of floating-point values.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// One scrape's metrics.
#[derive(Debug, Default)]
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// An empty scrape.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gauge. `help` without a final full stop (the encoder adds one).
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g = FloatGauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    /// A counter; `name` without `_total` (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A counter of a real quantity (seconds and the like); `name` without
    /// `_total`.
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        let c = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A gauge with one sample per label set (none: the family is listed
    /// with its help and no samples).
    pub fn gauges(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let family = Family::<Labels, FloatGauge>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }

    /// A counter with one sample per label set.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    /// A metric kept elsewhere (e.g. a counter family shared with the
    /// tasks that count), as it is now.
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The response carrying a scrape.
pub fn response(scrape: &Scrape) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(scrape.encode())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// What a request to a plain metrics listener asks for.
#[derive(Debug)]
pub enum Endpoint {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`: alive.
    Health,
    /// `GET /readyz`: ready to serve.
    Ready,
    /// Anything else: this answer.
    Refused(HttpResponse),
}

/// Routes a plain listener's request: these three paths, `GET` (or
/// `HEAD`) only; everything else is 404 (or 405).
pub fn route(req: &HttpRequest) -> Endpoint {
    let endpoint = match req.uri().path() {
        "/metrics" => Endpoint::Metrics,
        "/healthz" => Endpoint::Health,
        "/readyz" => Endpoint::Ready,
        _ => return Endpoint::Refused(text(StatusCode::NOT_FOUND, "not found")),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Endpoint::Refused(r);
    }
    endpoint
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_scrape_holds_its_samples_with_help_and_type() {
        let mut s = Scrape::new();
        s.gauge("miostream_test_seconds", "Time", 1.5);
        s.counter("miostream_test_events", "Events", 7);
        s.gauges(
            "miostream_test_peers",
            "Peers by role",
            [(vec![("role", "receiver".to_string())], 3.0)],
        );
        let text = s.encode();
        for line in [
            "# HELP miostream_test_seconds Time.",
            "# TYPE miostream_test_seconds gauge",
            "miostream_test_seconds 1.5",
            "# TYPE miostream_test_events_total counter",
            "miostream_test_events_total 7",
            "miostream_test_peers{role=\"receiver\"} 3.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let r = response(&s);
        assert_eq!(r.headers()[CONTENT_TYPE], CONTENT_TYPE_TEXT);
    }

    #[test]
    fn the_plain_listener_serves_three_paths() {
        let req = |m: &str, p: &str| {
            hyper::Request::builder()
                .method(m)
                .uri(p)
                .body(Bytes::new())
                .unwrap()
        };
        assert!(matches!(route(&req("GET", "/metrics")), Endpoint::Metrics));
        assert!(matches!(route(&req("GET", "/healthz")), Endpoint::Health));
        assert!(matches!(route(&req("HEAD", "/readyz")), Endpoint::Ready));
        for (m, p, status) in [
            ("GET", "/", 404),
            ("GET", "/api/state", 404),
            ("GET", "/login?token=x", 404),
            ("POST", "/api/inject", 404),
            ("POST", "/metrics", 405),
        ] {
            let Endpoint::Refused(r) = route(&req(m, p)) else {
                panic!("{m} {p} served")
            };
            assert_eq!(r.status(), status, "{m} {p}");
        }
    }
}
