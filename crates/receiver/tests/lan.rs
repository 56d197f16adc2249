//! A receiver on another LAN host: the supervisor listens on a veth address,
//! the receiver binary runs inside its own network namespace and reaches it
//! over TLS by IP, verifying the certificate that `init` issued for it.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::process::Output;

use miostream_peer::{Identity, SupervisorClient, Trust};
use miostream_protocol::{
    ComponentType, IntegrityMode, PeerMessage, SupervisorMessage, TopologyKind,
};
use miostream_supervisor::{Server, StateDir};
use miostream_test_support::LanHost;

const RECEIVER: &str = env!("CARGO_BIN_EXE_miostream-receiver");

async fn in_host(host: &LanHost, args: Vec<String>) -> Output {
    let mut cmd = host.command(RECEIVER);
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_receiver_on_another_host_lists_streams_over_tls() {
    let host = match LanHost::create() {
        Ok(h) => h,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: cannot create a network namespace here ({e})");
            return;
        }
        Err(e) => panic!("CI must be able to create network namespaces: {e}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::new(tmp.path().join("sup"));
    let listen = std::net::SocketAddr::from((host.gateway, 0));
    state.init(listen, &[], 2048).unwrap();
    // The receiver's identity is made on its host with the binary.
    let id_dir = tmp.path().join("rx");
    let out = in_host(
        &host,
        vec![
            "keygen".into(),
            "--out".into(),
            id_dir.display().to_string(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    state
        .authorize(&id_dir.join("peer.pub"), ComponentType::Receiver, None)
        .unwrap();

    // A broadcaster (here, in the test's namespace) announces a stream.
    let bkey = std::sync::Arc::new(miostream_auth::PrivateKey::generate(2048).unwrap());
    std::fs::write(tmp.path().join("b.pub"), bkey.public().to_pem()).unwrap();
    state
        .authorize(&tmp.path().join("b.pub"), ComponentType::Broadcaster, None)
        .unwrap();
    // Authorized before the supervisor starts.
    let mut config = state.load_config().unwrap();
    config.listen = listen;
    let server = Server::bind(&state, config).await.unwrap();
    let url = format!("wss://{}:{}", host.gateway, server.local_addr().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let trust = Trust::load(&state.trust_dir()).unwrap();
    let mut b = SupervisorClient::connect(
        &url.parse().unwrap(),
        &Identity::from_key(bkey),
        &trust,
        ComponentType::Broadcaster,
    )
    .await
    .unwrap();
    b.send(&PeerMessage::AnnounceStream {
        name: "lan-cam".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        b.recv().await.unwrap(),
        SupervisorMessage::StreamAnnounced { .. }
    ));

    let list_args = |id: &std::path::Path| {
        vec![
            "list".into(),
            "--supervisor".into(),
            url.clone(),
            "--identity".into(),
            id.display().to_string(),
            "--trust".into(),
            state.trust_dir().display().to_string(),
        ]
    };
    let out = in_host(&host, list_args(&id_dir)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("lan-cam\t") && stdout.contains("\ttree topology\t"),
        "{stdout}"
    );

    // An unauthorized key on that host is refused with a one-line reason.
    let stranger = tmp.path().join("stranger");
    in_host(
        &host,
        vec![
            "keygen".into(),
            "--out".into(),
            stranger.display().to_string(),
        ],
    )
    .await;
    let out = in_host(&host, list_args(&stranger)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not authorized") && err.trim().lines().count() == 1,
        "{err}"
    );
    // Nor can it join the stream.
    let mut run_args = list_args(&stranger);
    run_args[0] = "run".into();
    run_args.extend(["--stream", "lan-cam", "--duration", "5"].map(String::from));
    let out = in_host(&host, run_args).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not authorized") && err.trim().lines().count() == 1,
        "{err}"
    );

    b.close().await;
    let _ = stop.send(());
    task.await.unwrap();
}
