//! The monitor over real HTTPS: operators authenticate with the token, the
//! state lists every stream's overlay with its receivers' QoS reports, and
//! the injector tells receivers to fail. Malformed and oversized requests
//! get 4xx answers and the server keeps serving.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::SocketAddr;
use std::path::PathBuf;

use miostream_peer::SupervisorClient;
use miostream_protocol::signal::Capacity;
use miostream_protocol::{
    ComponentType, IntegrityMode, PeerId, PeerMessage, SupervisorMessage, TopologyKind,
};
use miostream_test_support::https::{self, HttpResponse};
use miostream_test_support::metrics::{parse as parse_metrics, sample};
use miostream_test_support::supervisor::{TestSupervisor, WAIT};
use serde_json::{json, Value};

struct Monitor {
    addr: SocketAddr,
    trust: PathBuf,
    token: String,
}

impl Monitor {
    fn of(sup: &TestSupervisor) -> Self {
        Self {
            addr: sup.monitor.expect("the monitor is on by default"),
            trust: sup.state().trust_dir(),
            token: sup.monitor_token(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        https::request(self.addr, &self.trust, "GET", path, headers, b"").await
    }

    async fn state(&self) -> Value {
        let bearer = format!("Bearer {}", self.token);
        let r = self.get("/api/state", &[("Authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        r.json()
    }

    async fn inject(&self, body: Value) -> HttpResponse {
        let bearer = format!("Bearer {}", self.token);
        https::request(
            self.addr,
            &self.trust,
            "POST",
            "/api/inject",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Polls the state until `done` accepts it; fails after WAIT.
    async fn state_until(&self, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.state().await;
            if done(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state never matched: {s:#}"
            );
        }
    }
}

async fn joined(sup: &TestSupervisor, key: usize, name: &str) -> SupervisorClient {
    let mut r = sup.connect(key, ComponentType::Receiver).await.unwrap();
    r.send(&PeerMessage::JoinStream {
        name: name.into(),
        capacity: Capacity::default(),
    })
    .await
    .unwrap();
    loop {
        if let SupervisorMessage::StreamJoined { .. } = r.recv_within(WAIT).await.unwrap() {
            return r;
        }
    }
}

fn qos(stalls: u64) -> PeerMessage {
    PeerMessage::QosReport {
        stalls,
        stall_ms: 120,
        buffer_ms: 1500,
        goodput_bps: 1_000_000,
        chunks_received: 42,
        chunks_rejected: 0,
        latency_ms_p50: 12.25,
        parent_changes: 0,
        latency_ms_p99: 30.5,
        bytes_received: 4000,
        bytes_from_broadcaster: 1000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_overlay_and_qos_and_inject_failures() {
    let sup = TestSupervisor::start(&[0], &[1, 2, 3], |c| c.monitor.lab_controls = true).await;
    let m = Monitor::of(&sup);

    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    b.send(&PeerMessage::AnnounceStream {
        name: "demo".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: String::new(),
    })
    .await
    .unwrap();
    loop {
        if let SupervisorMessage::StreamAnnounced { .. } = b.recv_within(WAIT).await.unwrap() {
            break;
        }
    }
    let mut receivers = Vec::new();
    for key in 1..=3 {
        receivers.push(joined(&sup, key, "demo").await);
    }
    let ids: Vec<PeerId> = receivers.iter().map(|r| r.peer_id()).collect();
    receivers[0].send(&qos(2)).await.unwrap();

    let state = m
        .state_until(|s| !s["streams"][0]["nodes"][0]["qos"].is_null())
        .await;
    let stream = &state["streams"][0];
    assert_eq!(stream["name"], "demo");
    assert_eq!(stream["topology"], "tree");
    assert_eq!(stream["integrity"], "hmac");
    assert!(stream["id"].is_string());
    assert_eq!(stream["broadcaster"], json!(b.peer_id()));
    let nodes = stream["nodes"].as_array().unwrap();
    let listed: Vec<Value> = nodes.iter().map(|n| n["peer"].clone()).collect();
    assert_eq!(listed, ids.iter().map(|i| json!(i)).collect::<Vec<_>>());
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["position"], i);
        for key in [
            "depth",
            "parents",
            "children",
            "backup_parents",
            "backup_children",
            "neighbours",
            "qos",
        ] {
            assert!(n.get(key).is_some(), "{key} missing in {n}");
        }
    }
    // A binary tree of 3: two under the broadcaster, one under the first.
    assert_eq!(nodes[0]["parents"], json!([b.peer_id()]));
    assert_eq!(nodes[2]["parents"], json!([ids[0]]));
    assert_eq!(nodes[2]["depth"], 2);
    assert_eq!(
        nodes[0]["qos"],
        json!({"stalls":2,"stall_ms":120,"buffer_ms":1500,"goodput_bps":1000000,
               "chunks_received":42,"chunks_rejected":0,"latency_ms_p50":12.25,"parent_changes":0,
               "latency_ms_p99":30.5,"bytes_received":4000,"bytes_from_broadcaster":1000})
    );
    assert!(nodes[1]["qos"].is_null());
    assert_eq!(
        state["injection"],
        json!({"running":false,"rate":0.0,"distribution":"uniform","injected":0})
    );
    assert_eq!(state["lab_controls"], true);

    // The same figures in /metrics, for token holders.
    let bearer = format!("Bearer {}", m.token);
    let r = m.get("/metrics", &[("Authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let scrape = parse_metrics(&r.text());
    let stream = [("stream", "demo")];
    assert_eq!(
        sample(&scrape, "miostream_peers", &[("role", "receiver")]),
        3.0
    );
    assert_eq!(
        sample(&scrape, "miostream_peers", &[("role", "broadcaster")]),
        1.0
    );
    assert_eq!(sample(&scrape, "miostream_streams", &[]), 1.0);
    assert_eq!(sample(&scrape, "miostream_handshakes_ok_total", &[]), 4.0);
    assert_eq!(sample(&scrape, "miostream_stream_viewers", &stream), 3.0);
    assert_eq!(sample(&scrape, "miostream_stream_stalls", &stream), 2.0);
    assert_eq!(
        sample(&scrape, "miostream_stream_stall_seconds", &stream),
        0.12
    );
    assert_eq!(
        sample(
            &scrape,
            "miostream_stream_goodput_bytes_per_second",
            &stream
        ),
        125_000.0
    );
    assert_eq!(
        sample(
            &scrape,
            "miostream_stream_latency_seconds",
            &[("stream", "demo"), ("quantile", "0.5")]
        ),
        0.01225
    );
    assert_eq!(
        sample(&scrape, "miostream_stream_offload_ratio", &stream),
        0.75
    );
    assert_eq!(sample(&scrape, "miostream_ejections_total", &[]), 0.0);

    // Inject: some receiver is told INJECT_FAILURE.
    let r = m
        .inject(json!({"rate": 20.0, "distribution": "binomial", "seed": 42}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["running"], true);
    assert_eq!(r.json()["distribution"], "binomial");
    let deadline = tokio::time::Instant::now() + WAIT;
    let victim = loop {
        let [a, b2, c] = &mut receivers[..] else {
            unreachable!()
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let got = tokio::time::timeout(left, async {
            tokio::select! {
                m = a.recv() => (0, m),
                m = b2.recv() => (1, m),
                m = c.recv() => (2, m),
            }
        })
        .await
        .expect("an INJECT_FAILURE before the deadline");
        if let (i, Ok(SupervisorMessage::InjectFailure {})) = got {
            break i;
        }
    };
    // The victim fails (its connection drops); the overlay is repaired.
    let gone = receivers.remove(victim);
    let gone_id = gone.peer_id();
    drop(gone);
    let r = m.inject(json!({"rate": 0})).await;
    assert_eq!(r.status, 200);
    let inj = r.json();
    assert_eq!(inj["running"], false);
    assert!(inj["injected"].as_u64().unwrap() >= 1, "{inj}");
    m.state_until(|s| {
        s["streams"][0]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["peer"] != json!(gone_id)))
    })
    .await;

    for r in receivers {
        r.close().await;
    }
    b.close().await;
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_token_holders_get_in_and_bad_requests_get_4xx() {
    let sup = TestSupervisor::start(&[0], &[1], |c| c.monitor.lab_controls = true).await;
    let m = Monitor::of(&sup);

    // Health and readiness need no token, and show nothing else.
    let r = m.get("/healthz", &[]).await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = m.get("/readyz", &[]).await;
    assert_eq!((r.status, r.text().trim()), (200, "ready"));

    // No token, wrong token: 401 (the page offers the login form).
    let r = m.get("/", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("<form"), "{}", r.text());
    assert_eq!(m.get("/api/state", &[]).await.status, 401);
    let wrong = format!("Bearer {}0", m.token);
    assert_eq!(
        m.get("/api/state", &[("Authorization", &wrong)])
            .await
            .status,
        401
    );
    let r = m.get("/login?token=nope", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());

    // The login link sets the cookie, which opens the page and the API.
    let r = m.get(&format!("/login?token={}", m.token), &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.header("set-cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = m.get("/", &[("Cookie", &pair)]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<svg") || r.text().contains("createElementNS"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(m.get("/api/state", &[("Cookie", &pair)]).await.status, 200);
    assert_eq!(
        m.state().await,
        json!({"streams":[],"injection":{"running":false,"rate":0.0,"distribution":"uniform","injected":0},"lab_controls":true})
    );

    // Bad input: 4xx, and the server keeps serving.
    assert_eq!(m.inject(json!({"rate": -1})).await.status, 400);
    assert_eq!(
        m.inject(json!({"rate": 1, "distribution": "zipf"}))
            .await
            .status,
        400
    );
    let garbage = https::raw(m.addr, &m.trust, b"\x00\x01 nonsense\r\n\r\n").await;
    assert_eq!(https::parse(&garbage).status, 400);
    let mut big = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        https::parse(&https::raw(m.addr, &m.trust, &big).await).status,
        431
    );
    let body = b"POST /api/inject HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(
        https::parse(&https::raw(m.addr, &m.trust, body).await).status,
        413
    );
    let mut chunked =
        b"POST /api/inject HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n".to_vec();
    chunked.extend(std::iter::repeat_n(b'a', 0x2000));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(
        https::parse(&https::raw(m.addr, &m.trust, &chunked).await).status,
        413
    );
    // /metrics wants the token too.
    let r = m.get("/metrics", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    m.state().await;

    // The token is the one `init` wrote to DIR/monitor.token.
    let token_file = sup.state().monitor_token_path();
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        m.token
    );
    assert!(m.token.len() == 64 && m.token.bytes().all(|b| b.is_ascii_hexdigit()));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_is_refused_unless_lab_controls_are_on() {
    let sup = TestSupervisor::start(&[0], &[1], |_| {}).await;
    let m = Monitor::of(&sup);
    let r = m.inject(json!({"rate": 1})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("lab_controls = true"));
    let state = m.state().await;
    assert_eq!(state["lab_controls"], false);
    assert_eq!(state["injection"]["running"], false);
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_probes_only_without_a_token() {
    let sup = TestSupervisor::start(&[0], &[1], |c| {
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    let addr = sup.metrics.expect("a metrics listener");
    let _r = sup.connect(1, ComponentType::Receiver).await.unwrap();
    // The hub registers the peer just after its handshake: poll (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let (r, scrape) = loop {
        let r = https::plain_get(addr, "/metrics").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let scrape = parse_metrics(&r.text());
        if sample(&scrape, "miostream_peers", &[("role", "receiver")]) == 1.0 {
            break (r, scrape);
        }
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::task::yield_now().await;
    };
    assert_eq!(
        sample(&scrape, "miostream_peers", &[("role", "broadcaster")]),
        0.0
    );
    assert_eq!(sample(&scrape, "miostream_streams", &[]), 0.0);
    assert_eq!(sample(&scrape, "miostream_handshakes_ok_total", &[]), 1.0);
    assert_eq!(https::plain_get(addr, "/healthz").await.status, 200);
    assert_eq!(https::plain_get(addr, "/readyz").await.status, 200);
    // Nothing else: not the dashboard, the state, the login or the token.
    let token = sup.monitor_token();
    for path in [
        "/",
        "/api/state",
        &format!("/login?token={token}"),
        "/api/inject",
    ] {
        let r = https::plain_get(addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains(&token));
    }
    assert!(!r.text().contains(&token));
    // An unknown key is refused, and counted by reason.
    let refused = sup.connect(7, ComponentType::Receiver).await;
    assert!(refused.is_err());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = parse_metrics(&https::plain_get(addr, "/metrics").await.text());
        let refused = |reason| {
            miostream_test_support::metrics::find(
                &scrape,
                "miostream_handshakes_refused_total",
                &[("reason", reason)],
            )
        };
        if let Some(n) = refused("unknown_key") {
            assert_eq!(n, 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::task::yield_now().await;
    }
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_can_be_turned_off() {
    let sup = TestSupervisor::start(&[0], &[1], |c| c.monitor.listen = "off".into()).await;
    assert!(sup.monitor.is_none());
    sup.stop().await;
}
