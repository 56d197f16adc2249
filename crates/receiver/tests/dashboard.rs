//! The supervisor's monitor with a real stream: a broadcaster on the bundled
//! WebM and three receivers in a tree over real WebRTC on loopback.
//!
//! - `/api/state` lists the stream's receivers with their QoS reports, and a
//!   failure injected through `/api/inject` makes a receiver crash and
//!   rejoin as a new viewer (its summary counts the failure);
//! - headless Chromium (Debian's package, driven by playwright-core from
//!   `scripts/browser/`) loads the dashboard and sees every receiver's node
//!   in the stream's graph. Without node, Chromium or `npm ci --prefix
//!   scripts/browser` that check is skipped with a notice, except under CI
//!   (`CI` set), where it fails.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, Input};
use miostream_peer::Identity;
use miostream_protocol::{IntegrityMode, TopologyKind};
use miostream_receiver::{Bound, Output, ReceiveConfig, Summary};
use miostream_test_support::supervisor::{keys, TestSupervisor};
use miostream_test_support::{https, metrics};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Everything here is real-time WebRTC on a shared 2-core machine: generous.
const DEADLINE: Duration = Duration::from_secs(60);
const RECEIVERS: usize = 3;

/// One test at a time: each runs a whole stream.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

type Running<T> = (oneshot::Sender<()>, JoinHandle<anyhow::Result<T>>);

/// A supervisor (with a token-less `/metrics` listener), a looping
/// broadcaster ("demo", tree) and `n` receivers that rewrite their
/// summaries every second; the first serves `--metrics`.
struct Stream {
    sup: TestSupervisor,
    tmp: tempfile::TempDir,
    broadcaster: Running<miostream_broadcaster::BroadcastReport>,
    receivers: Vec<Running<Summary>>,
    n: usize,
    /// The first receiver's `/metrics` listener.
    receiver_metrics: SocketAddr,
}

impl Stream {
    async fn start(n: usize, lab_controls: bool) -> Self {
        let ids: Vec<usize> = (1..=n).collect();
        let sup = TestSupervisor::start(&[0], &ids, |c| {
            c.monitor.lab_controls = lab_controls;
            c.metrics.listen = "127.0.0.1:0".into();
        })
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = BroadcastConfig {
            supervisor: sup.url.clone(),
            identity: Identity::from_key(keys()[0].clone()),
            trust: sup.trust.clone(),
            stream: "demo".into(),
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Sign,
            input: Input::File {
                path: repo().join("assets/test.webm"),
                looped: true,
            },
            bind: Some(local),
            ice_servers: vec![],
            title: String::new(),
            encoder: Default::default(),
        };
        let broadcaster = (
            stop,
            tokio::spawn(miostream_broadcaster::run(config, async move {
                let _ = stopped.await;
            })),
        );
        let metrics = miostream_receiver::bind_metrics((Ipv4Addr::LOCALHOST, 0).into())
            .await
            .unwrap();
        let mut s = Self {
            sup,
            tmp,
            broadcaster,
            receivers: Vec::new(),
            n,
            receiver_metrics: metrics.local_addr().unwrap(),
        };
        let mut metrics = Some(metrics);
        // Receivers join once the stream is announced.
        s.state_until("the stream is announced", |st| {
            st["streams"][0]["name"] == "demo"
        })
        .await;
        for &i in &ids {
            let (stop, stopped) = oneshot::channel::<()>();
            let config = ReceiveConfig {
                supervisor: s.sup.url.clone(),
                identity: Identity::from_key(keys()[i].clone()),
                trust: s.sup.trust.clone(),
                stream: "demo".into(),
                out: Output::Discard,
                serve: None,
                metrics: None,
                duration: None,
                threshold: 1.0,
                startup: Duration::from_millis(1000),
                bind: Some(local),
                ice_servers: vec![],
                live_summary: Some(s.summary_path(i)),
                wait: false,
                status: false,
            };
            let bound = Bound {
                server: None,
                metrics: metrics.take(),
            };
            s.receivers.push((
                stop,
                tokio::spawn(miostream_receiver::run_serving(config, bound, async move {
                    let _ = stopped.await;
                })),
            ));
        }
        s
    }

    fn summary_path(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("receiver{i}.json"))
    }

    /// Receiver `i`'s live summary, once written.
    fn summary(&self, i: usize) -> Option<Value> {
        let text = std::fs::read_to_string(self.summary_path(i)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn monitor(&self) -> SocketAddr {
        self.sup.monitor.unwrap()
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let bearer = format!("Bearer {}", self.sup.monitor_token());
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = https::request(
            self.monitor(),
            &self.sup.state().trust_dir(),
            method,
            path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()
    }

    /// Polls `/api/state` until `done` accepts it.
    async fn state_until(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let state = self.api("GET", "/api/state", None).await;
            if done(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}: {state:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await; // poll interval, not a sync
        }
    }

    /// Waits until all receivers are placed and have reported QoS with chunks.
    async fn all_reporting(&self) -> Value {
        self.state_until("every receiver reports chunks", |s| {
            s["streams"][0]["nodes"].as_array().is_some_and(|n| {
                n.len() == self.n
                    && n.iter()
                        .all(|n| n["qos"]["chunks_received"].as_u64().unwrap_or(0) > 0)
            })
        })
        .await
    }

    async fn stop(self) {
        let mut summaries = Vec::new();
        for (stop, task) in self.receivers {
            let _ = stop.send(());
            summaries.push(tokio::time::timeout(DEADLINE, task).await);
        }
        let (stop, task) = self.broadcaster;
        let _ = stop.send(());
        let _ = tokio::time::timeout(DEADLINE, task).await;
        self.sup.stop().await;
        for s in summaries {
            let summary = s.expect("receiver stopped in time").unwrap().unwrap();
            assert_eq!(summary.chunks_rejected, 0);
        }
    }
}

fn peers(state: &Value) -> HashSet<String> {
    state["streams"][0]["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| n["peer"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_shows_qos_and_an_injected_failure_makes_a_receiver_rejoin() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stream::start(RECEIVERS, true).await;
    let state = s.all_reporting().await;
    let stream = &state["streams"][0];
    assert_eq!(stream["topology"], "tree");
    assert_eq!(stream["integrity"], "sign");
    let nodes = stream["nodes"].as_array().unwrap();
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["position"], i);
        let q = &n["qos"];
        assert_eq!(q["chunks_rejected"], 0);
        for key in [
            "stalls",
            "stall_ms",
            "buffer_ms",
            "goodput_bps",
            "latency_ms_p50",
            "parent_changes",
        ] {
            assert!(q[key].is_number(), "{key} in {q}");
        }
    }
    // Every receiver's summary names a peer the monitor lists.
    let before = peers(&state);
    for i in 1..=RECEIVERS {
        let id = s.summary(i).unwrap()["peer_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(before.contains(&id), "{id} not in {before:?}");
    }

    // One injected failure (high rate, stopped as soon as it fired).
    let inj = s
        .api(
            "POST",
            "/api/inject",
            Some(json!({"rate": 5.0, "distribution": "uniform", "seed": 7})),
        )
        .await;
    assert_eq!(inj["running"], true);
    s.state_until("a failure is injected", |st| {
        st["injection"]["injected"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let inj = s.api("POST", "/api/inject", Some(json!({"rate": 0}))).await;
    assert_eq!(inj["running"], false);
    let injected = inj["injected"].as_u64().unwrap();
    assert!(injected >= 1);

    // The victims rejoined as new viewers: the overlay is whole again with
    // new peer ids, which report QoS; their summaries count the failures.
    let after = s
        .state_until("the victims rejoined and report chunks", |st| {
            let now = peers(st);
            now.len() == RECEIVERS
                && now != before
                && st["streams"][0]["nodes"].as_array().is_some_and(|n| {
                    n.iter()
                        .all(|n| n["qos"]["chunks_received"].as_u64().unwrap_or(0) > 0)
                })
        })
        .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let failures = loop {
        let failures: u64 = (1..=RECEIVERS)
            .map(|i| {
                s.summary(i)
                    .map_or(0, |v| v["failures"].as_u64().unwrap_or(0))
            })
            .sum();
        if failures >= 1 {
            break failures;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no summary counts a failure"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll interval
    };
    assert!(failures <= injected, "{failures} > {injected}");
    for i in 1..=RECEIVERS {
        let v = s.summary(i).unwrap();
        if v["failures"].as_u64().unwrap() > 0 {
            let id = v["peer_id"].as_str().unwrap();
            assert!(!before.contains(id), "receiver {i} kept its peer id");
            assert!(
                peers(&after).contains(id)
                    || peers(&s.api("GET", "/api/state", None).await).contains(id)
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_shows_the_topology_of_a_running_stream() {
    if !miostream_test_support::browser_available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    // Without lab controls: the page must hide the failure controls.
    let s = Stream::start(RECEIVERS, false).await;
    let state = s.all_reporting().await;
    let expected = peers(&state);
    let shot = s.tmp.path().join("dashboard.png");
    let url = format!("https://{}/", s.monitor());
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("scripts/browser/dashboard.mjs"))
        .arg(&url)
        .arg(s.sup.monitor_token())
        .arg(&shot)
        .arg(RECEIVERS.to_string())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the browser check finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(seen["stream"], "demo");
    let shown: HashSet<String> = seen["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown.len(), RECEIVERS, "{seen}");
    // The overlay was stable (no failure here): the same receivers.
    assert_eq!(shown, expected);
    assert!(
        seen["edges"].as_u64().unwrap() >= RECEIVERS as u64,
        "{seen}"
    );
    // The per-stream totals and every receiver's address; no controls.
    assert_eq!(seen["viewers"], RECEIVERS, "{seen}");
    assert_eq!(seen["controls"], false, "{seen}");
    let addresses = seen["addresses"].as_array().unwrap();
    assert_eq!(addresses.len(), RECEIVERS);
    assert!(
        addresses
            .iter()
            .all(|a| a.as_str().unwrap().starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert!(seen["goodput_bps"].as_f64().unwrap() > 0.0, "{seen}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    if let Some(keep) = std::env::var_os("MIOSTREAM_DASHBOARD_PNG") {
        std::fs::copy(&shot, keep).unwrap();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_running_stream_parse_and_add_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Stream::start(1, false).await;
    s.all_reporting().await;
    let at = s.sup.metrics.expect("the supervisor's metrics listener");
    let stream = [("stream", "demo")];

    // The supervisor's, on the token-less listener: the QoS report is in.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let scrape = loop {
        let r = https::plain_get(at, "/metrics").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let scrape = metrics::parse(&r.text());
        let goodput = metrics::find(
            &scrape,
            "miostream_stream_goodput_bytes_per_second",
            &stream,
        );
        if goodput.is_some_and(|g| g > 0.0)
            && metrics::find(&scrape, "miostream_stream_offload_ratio", &stream).is_some()
        {
            break scrape;
        }
        assert!(tokio::time::Instant::now() < deadline, "no QoS in /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await; // poll interval
    };
    let v = |name: &str, labels: &[(&str, &str)]| metrics::sample(&scrape, name, labels);
    assert_eq!(v("miostream_peers", &[("role", "receiver")]), 1.0);
    assert_eq!(v("miostream_peers", &[("role", "broadcaster")]), 1.0);
    assert_eq!(v("miostream_streams", &[]), 1.0);
    assert!(v("miostream_handshakes_ok_total", &[]) >= 2.0);
    assert_eq!(v("miostream_stream_viewers", &stream), 1.0);
    assert!(v("miostream_stream_stalls", &stream) >= 0.0);
    assert!(v("miostream_stream_stall_seconds", &stream) >= 0.0);
    // Loopback: well under a second; goodput within reason.
    let p50 = v(
        "miostream_stream_latency_seconds",
        &[("stream", "demo"), ("quantile", "0.5")],
    );
    let p99 = v(
        "miostream_stream_latency_seconds",
        &[("stream", "demo"), ("quantile", "0.99")],
    );
    assert!((0.0..1.0).contains(&p50) && p50 <= p99, "{p50} {p99}");
    let goodput = v("miostream_stream_goodput_bytes_per_second", &stream);
    assert!(goodput > 1_000.0 && goodput < 100_000_000.0, "{goodput}");
    // The only receiver is the broadcaster's child: nothing is offloaded.
    assert_eq!(v("miostream_stream_offload_ratio", &stream), 0.0);
    assert_eq!(v("miostream_bad_chunk_reports_total", &[]), 0.0);
    assert_eq!(v("miostream_ejections_total", &[]), 0.0);
    // Nothing else on that listener; the monitor wants the token.
    assert_eq!(https::plain_get(at, "/api/state").await.status, 404);
    let trust = s.sup.state().trust_dir();
    let r = https::request(s.monitor(), &trust, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {}", s.sup.monitor_token());
    let r = https::request(
        s.monitor(),
        &trust,
        "GET",
        "/metrics",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metrics::sample(&metrics::parse(&r.text()), "miostream_streams", &[]),
        1.0
    );
    // Injection is off without lab_controls.
    let r = https::request(
        s.monitor(),
        &trust,
        "POST",
        "/api/inject",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        br#"{"rate": 1}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // The receiver's own --metrics.
    let at = s.receiver_metrics;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let scrape = loop {
        let r = https::plain_get(at, "/metrics").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let scrape = metrics::parse(&r.text());
        let playing = metrics::sample(&scrape, "miostream_receiver_state", &[("state", "playing")]);
        if playing == 1.0 {
            break scrape;
        }
        assert!(tokio::time::Instant::now() < deadline, "never playing");
        tokio::time::sleep(Duration::from_millis(200)).await; // poll interval
    };
    let v = |name: &str, labels: &[(&str, &str)]| metrics::sample(&scrape, name, labels);
    for state in ["joining", "waiting", "buffering", "stalled"] {
        assert_eq!(
            v("miostream_receiver_state", &[("state", state)]),
            0.0,
            "{state}"
        );
    }
    let received = v("miostream_receiver_chunks_received_total", &[]);
    assert!(received > 0.0);
    assert_eq!(v("miostream_receiver_chunks_verified_total", &[]), received);
    assert_eq!(v("miostream_receiver_chunks_rejected_total", &[]), 0.0);
    let bytes = v("miostream_receiver_bytes_received_total", &[]);
    assert!(bytes > 0.0);
    assert_eq!(
        v("miostream_receiver_bytes_from_broadcaster_total", &[]),
        bytes
    );
    assert!(v("miostream_receiver_goodput_bytes_per_second", &[]) > 0.0);
    assert!(v("miostream_receiver_buffer_seconds", &[]) > 0.0);
    assert!(v("miostream_receiver_stall_seconds_total", &[]) >= 0.0);
    assert!(v("miostream_receiver_stalls_total", &[]) >= 0.0);
    assert_eq!(v("miostream_receiver_parent_changes_total", &[]), 0.0);
    assert_eq!(v("miostream_receiver_players", &[]), 0.0);
    let p50 = v("miostream_receiver_latency_seconds", &[("quantile", "0.5")]);
    assert!((0.0..1.0).contains(&p50), "{p50}");
    assert_eq!(https::plain_get(at, "/healthz").await.status, 200);
    assert_eq!(https::plain_get(at, "/readyz").await.status, 200);
    assert_eq!(https::plain_get(at, "/").await.status, 404);
    s.stop().await;
}
