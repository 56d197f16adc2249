//! Enrollment end to end, in process: an invite issued on a running
//! supervisor's directory enrolls a peer's key over TLS with no authorize
//! step; the handshake then authenticates it, and the monitor shows its
//! label. Used-up, expired, revoked and wrong-role invites are refused
//! with their reasons, bad attempts get one try per connection, and the
//! `peers` presence comes from the running supervisor.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use miostream_peer::{enroll, EnrollError, Identity, PeerPaths, SupervisorConnection};
use miostream_protocol::signal::{ErrorCode, InviteSecret};
use miostream_protocol::{ComponentType, PeerMessage, SupervisorMessage, PROTOCOL_VERSION};
use miostream_supervisor::control::{ControlReply, ControlRequest};
use miostream_supervisor::invites::InviteRequest;
use miostream_supervisor::state::unix_now;
use miostream_supervisor::StateDir;
use miostream_test_support::https;
use miostream_test_support::supervisor::{keys, TestSupervisor, WAIT};

fn request(sup: &TestSupervisor, role: ComponentType, uses: u32, label: &str) -> InviteRequest {
    InviteRequest {
        role,
        uses,
        valid_secs: 3600,
        label: Some(label.into()),
        urls: vec![sup.url.to_string()],
    }
}

/// Writes an invite issued at `issued` into `dir`; returns its path and id.
fn invite(
    sup: &TestSupervisor,
    req: &InviteRequest,
    issued: u64,
    dir: &std::path::Path,
) -> (std::path::PathBuf, String) {
    let (record, file) = sup.state().create_invite(req, issued).unwrap();
    let path = dir.join(format!("{}.toml", record.id));
    StateDir::write_invite(&path, &file).unwrap();
    (path, record.id)
}

fn paths(root: &std::path::Path, role: ComponentType) -> PeerPaths {
    PeerPaths::under(&root.join("data"), &root.join("config"), role)
}

/// Enrolls as `role` with the identity and profile under `root`.
async fn enroll_at(
    file: &std::path::Path,
    root: &std::path::Path,
    role: ComponentType,
) -> Result<miostream_peer::enroll::Enrolled, EnrollError> {
    enroll(file, role, paths(root, role)).await
}

/// Connects with what enrolling under `root` stored, no flags.
async fn connect_enrolled(
    root: &std::path::Path,
    role: ComponentType,
) -> (miostream_peer::Connection, miostream_peer::SupervisorClient) {
    let conn = miostream_peer::resolve(role, Ok(paths(root, role)), None, None, None).unwrap();
    let client = miostream_peer::SupervisorClient::connect(
        &conn.supervisor,
        &conn.identity,
        &conn.trust,
        role,
    )
    .await
    .unwrap();
    (conn, client)
}

async fn presence(sup: &TestSupervisor) -> ControlReply {
    let state = sup.state();
    tokio::task::spawn_blocking(move || state.ask_running(ControlRequest::Peers))
        .await
        .unwrap()
        .unwrap()
        .expect("the supervisor answers on its control socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_enrolls_a_key_that_then_authenticates_with_its_label() {
    let sup = TestSupervisor::start(&[], &[], |_| {}).await;
    // The running supervisor recorded its real address (it listens on port 0).
    assert_eq!(
        sup.state().recorded_listening().unwrap().port(),
        sup.url.port
    );
    let tmp = tempfile::tempdir().unwrap();
    let req = request(&sup, ComponentType::Receiver, 2, "town hall");
    let (file, _) = invite(&sup, &req, unix_now(), tmp.path());
    let secret = std::fs::read_to_string(&file).unwrap();

    let alice = tmp.path().join("alice");
    let done = enroll_at(&file, &alice, ComponentType::Receiver)
        .await
        .unwrap();
    assert!(done.new_identity);
    assert_eq!(done.label.as_deref(), Some("town hall"));
    // The profile carries the URL and the trust bundle, never the secret.
    let profile = std::fs::read_to_string(&done.paths.profile).unwrap();
    assert!(profile.contains(&sup.url.to_string()));
    let (_, file_secret) = secret.split_once("secret = ").unwrap();
    let file_secret = file_secret.lines().next().unwrap().trim_matches('"');
    assert_eq!(file_secret.len(), 64);
    assert!(!profile.contains(file_secret));

    // Flags-free: the enrolled profile is all a peer needs.
    let (conn, mut client) = connect_enrolled(&alice, ComponentType::Receiver).await;
    assert!(client.list_streams().await.unwrap().is_empty());

    // Its label is on the authorized list and, once it joins a stream, in
    // the monitor's state; `peers` sees it connected.
    let list = sup.state().load_authorized().unwrap();
    let fp = conn.identity.key().public().fingerprint();
    assert_eq!(list.get(&fp).unwrap().label.as_deref(), Some("town hall"));
    let mut b = enrolled_broadcaster(&sup, tmp.path()).await;
    b.send(&PeerMessage::AnnounceStream {
        name: "hall".into(),
        topology: miostream_protocol::TopologyKind::Tree,
        integrity: miostream_protocol::IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: String::new(),
    })
    .await
    .unwrap();
    loop {
        if let SupervisorMessage::StreamAnnounced { .. } = b.recv().await.unwrap() {
            break;
        }
    }
    client
        .send(&PeerMessage::JoinStream {
            name: "hall".into(),
            capacity: Default::default(),
        })
        .await
        .unwrap();
    loop {
        if let SupervisorMessage::StreamJoined { .. } = client.recv().await.unwrap() {
            break;
        }
    }
    let bearer = format!("Bearer {}", sup.monitor_token());
    let state = https::request(
        sup.monitor.unwrap(),
        &sup.state().trust_dir(),
        "GET",
        "/api/state",
        &[("Authorization", &bearer)],
        b"",
    )
    .await
    .json();
    let node = &state["streams"][0]["nodes"][0];
    assert_eq!(node["label"], "town hall", "{state}");
    assert_eq!(node["peer"], client.peer_id().to_string());
    let ControlReply::Peers { peers, .. } = presence(&sup).await else {
        panic!("not a presence reply")
    };
    let me = peers
        .iter()
        .find(|p| p.fingerprint == fp.to_string())
        .expect("the enrolled key is present");
    assert_eq!(me.connected, 1);

    // Enrolling again keeps the identity (and spends the second use).
    let again = enroll_at(&file, &alice, ComponentType::Receiver)
        .await
        .unwrap();
    assert!(!again.new_identity);
    assert_eq!(again.fingerprint, fp.to_string());
    // Now it is used up.
    let err = enroll_at(&file, &alice, ComponentType::Receiver)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "enrollment refused: this invite is used up"
    );
    client.close().await;
    sup.stop().await;
}

/// A broadcaster enrolled with its own invite (as operators will do).
async fn enrolled_broadcaster(
    sup: &TestSupervisor,
    tmp: &std::path::Path,
) -> miostream_peer::SupervisorClient {
    let req = request(sup, ComponentType::Broadcaster, 1, "studio");
    let (file, _) = invite(sup, &req, unix_now(), tmp);
    let root = tmp.join("studio");
    enroll_at(&file, &root, ComponentType::Broadcaster)
        .await
        .unwrap();
    connect_enrolled(&root, ComponentType::Broadcaster).await.1
}

#[tokio::test]
async fn expired_revoked_and_wrong_role_invites_are_refused_with_their_reason() {
    let sup = TestSupervisor::start(&[], &[], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let peer = paths(tmp.path(), ComponentType::Receiver);
    let refused = |e: EnrollError| match e {
        EnrollError::Refused(reason) => reason,
        other => panic!("expected a refusal, got {other}"),
    };

    // Issued two hours ago for one hour.
    let req = request(&sup, ComponentType::Receiver, 5, "late");
    let (file, _) = invite(&sup, &req, unix_now() - 7200, tmp.path());
    let err = enroll(&file, ComponentType::Receiver, peer.clone())
        .await
        .unwrap_err();
    assert!(refused(err).starts_with("this invite expired at "));

    let (file, id) = invite(&sup, &req, unix_now(), tmp.path());
    sup.state().revoke_invite(&id).unwrap();
    let err = enroll(&file, ComponentType::Receiver, peer.clone())
        .await
        .unwrap_err();
    assert_eq!(refused(err), "this invite was revoked");

    // A broadcaster invite used by a receiver: refused locally, and by the
    // supervisor if the peer insists.
    let breq = request(&sup, ComponentType::Broadcaster, 1, "cam");
    let (file, _) = invite(&sup, &breq, unix_now(), tmp.path());
    let err = enroll(&file, ComponentType::Receiver, peer.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::WrongBinary { .. }), "{err}");
    // No key was authorized by any of it.
    assert!(sup.state().load_authorized().unwrap().is_empty());
    sup.stop().await;
}

/// Sends one `ENROLL_REQUEST` with `secret` on a fresh connection; returns
/// the supervisor's answer.
async fn attempt(sup: &TestSupervisor, secret: &str, public_key: String) -> SupervisorMessage {
    let mut conn = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    conn.recv(WAIT).await.unwrap();
    conn.send(&PeerMessage::EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        secret: InviteSecret(secret.into()),
        public_key,
        component_type: ComponentType::Receiver,
    })
    .await
    .unwrap();
    let answer = conn.recv(WAIT).await.unwrap();
    // One attempt per connection: it is closed now.
    let _ = conn
        .send(&PeerMessage::EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            secret: InviteSecret(secret.into()),
            public_key: String::new(),
            component_type: ComponentType::Receiver,
        })
        .await;
    assert!(
        conn.recv(WAIT).await.is_err(),
        "the connection stays closed"
    );
    answer
}

#[tokio::test]
async fn bad_enroll_attempts_are_refused_one_per_connection() {
    let sup = TestSupervisor::start(&[], &[], |_| {}).await;
    let pem = keys()[3].public().to_pem().to_owned();
    let refusal = |m: SupervisorMessage| match m {
        SupervisorMessage::Error {
            code: ErrorCode::InviteRefused,
            message,
            fatal: true,
        } => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    for bad in [
        "",
        "00",
        "zz".repeat(32).as_str(),
        "00".repeat(32).as_str(),
        "0".repeat(10_000).as_str(),
    ] {
        let m = attempt(&sup, bad, pem.clone()).await;
        assert!(refusal(m).starts_with("unknown invite"), "{bad}");
    }
    // A good secret with a bad key spends nothing.
    let tmp = tempfile::tempdir().unwrap();
    let (_, file) = sup
        .state()
        .create_invite(&request(&sup, ComponentType::Receiver, 1, "x"), unix_now())
        .unwrap();
    match attempt(&sup, &file.secret.0, "not a key".into()).await {
        SupervisorMessage::Error {
            code: ErrorCode::Malformed,
            ..
        } => {}
        other => panic!("expected malformed, got {other:?}"),
    }
    match attempt(&sup, &file.secret.0, pem.clone()).await {
        SupervisorMessage::Enrolled { label, .. } => assert_eq!(label.as_deref(), Some("x")),
        other => panic!("expected ENROLLED, got {other:?}"),
    }
    assert_eq!(
        refusal(attempt(&sup, &file.secret.0, pem).await),
        "this invite is used up"
    );
    // Enrolled means authenticated on the next connection.
    let id = Identity::from_key(keys()[3].clone());
    miostream_peer::SupervisorClient::connect(&sup.url, &id, &sup.trust, ComponentType::Receiver)
        .await
        .unwrap();
    // ENROLL_REQUEST after the handshake started is out of order.
    let mut conn = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    conn.recv(WAIT).await.unwrap();
    conn.send(&PeerMessage::CollectPeerInfoResponse {
        protocol_version: PROTOCOL_VERSION,
        peer_id: miostream_protocol::PeerId::random(),
        public_key: keys()[3].public().to_pem().to_owned(),
        component_type: ComponentType::Receiver,
    })
    .await
    .unwrap();
    conn.recv(WAIT).await.unwrap();
    conn.send(&PeerMessage::EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        secret: file.secret.clone(),
        public_key: String::new(),
        component_type: ComponentType::Receiver,
    })
    .await
    .unwrap();
    match conn.recv(WAIT).await.unwrap() {
        SupervisorMessage::Error {
            code: ErrorCode::OutOfOrder,
            ..
        } => {}
        other => panic!("expected out of order, got {other:?}"),
    }
    drop(tmp);
    sup.stop().await;
}
