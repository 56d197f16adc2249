//! Bad input to `miostream-broadcaster run` is a one-line error and a
//! non-zero exit, before anything is announced.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_miostream-broadcaster");

fn setup() -> (tempfile::TempDir, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let sup = miostream_supervisor::StateDir::new(tmp.path().join("sup"));
    sup.init("127.0.0.1:0".parse().unwrap(), &[], 2048).unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(tmp.path().join("id"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let args = vec![
        "run".into(),
        "--supervisor".into(),
        // Nothing listens there: input errors must come first.
        "wss://127.0.0.1:9".into(),
        "--identity".into(),
        tmp.path().join("id").display().to_string(),
        "--trust".into(),
        sup.trust_dir().display().to_string(),
        "--stream".into(),
        "s".into(),
    ];
    (tmp, args)
}

fn fails_with(args: &[String], extra: &[&str], expected: &str) {
    let out = Command::new(BIN).args(args).args(extra).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("miostream-broadcaster: ") && last.contains(expected),
        "{err}"
    );
}

#[test]
fn missing_inputs_and_cameras_are_clear_errors() {
    let (_tmp, args) = setup();
    fails_with(
        &args,
        &["--input", "/nonexistent/talk.webm"],
        "cannot open /nonexistent/talk.webm",
    );
    fails_with(
        &args,
        &["--webcam", "/dev/video99"],
        "camera /dev/video99 not found",
    );
    // No input at all is a usage error.
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(!out.status.success());
}

/// `enroll` with a broadcaster invite, then `run` with no connection flags
/// gets as far as the input (the connection resolved from the profile);
/// without enrolling, `run` says to enroll. HOME and XDG are the test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_then_run_without_connection_flags() {
    use miostream_protocol::ComponentType;
    use miostream_supervisor::invites::InviteRequest;
    let sup = miostream_test_support::supervisor::TestSupervisor::start(&[], &[], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = tokio::process::Command::new(BIN);
        c.args(args)
            .env("HOME", tmp.path())
            .env("XDG_DATA_HOME", tmp.path().join("data"))
            .env("XDG_CONFIG_HOME", tmp.path().join("config"))
            .env_remove("MIOSTREAM_SUPERVISOR")
            .env_remove("MIOSTREAM_IDENTITY")
            .env_remove("MIOSTREAM_TRUST");
        c
    };
    let run_args = ["run", "--stream", "s", "--input", "/nonexistent/talk.webm"];
    let out = cmd(&run_args).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().contains("miostream-broadcaster enroll"), "{err}");

    let req = InviteRequest {
        role: ComponentType::Broadcaster,
        uses: 1,
        valid_secs: 600,
        label: Some("stage".into()),
        urls: vec![sup.url.to_string()],
    };
    let (_, file) = sup
        .state()
        .create_invite(&req, miostream_supervisor::state::unix_now())
        .unwrap();
    let path = tmp.path().join("invite.toml");
    miostream_supervisor::StateDir::write_invite(&path, &file).unwrap();
    let out = cmd(&["enroll", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp
        .path()
        .join("data/miostream/broadcaster/peer.key")
        .exists());
    let out = cmd(&run_args).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open /nonexistent/talk.webm"), "{err}");
    sup.stop().await;
}

#[test]
fn bad_titles_and_encoder_settings_are_one_line_errors() {
    let (_tmp, args) = setup();
    let long = "x".repeat(201);
    fails_with(
        &args,
        &["--input", "-", "--title", &long],
        "--title: the title is 201 characters long; at most 200 are allowed",
    );
    fails_with(
        &args,
        &["--webcam", "/dev/video99", "--video-bitrate", "10"],
        "--video-bitrate 10 is outside 50..=50000 kbit/s",
    );
    fails_with(
        &args,
        &["--webcam", "/dev/video99", "--keyint", "0"],
        "--keyint 0 is outside 1..=600 frames",
    );
    fails_with(
        &args,
        &["--input", "talk.webm", "--framerate", "30"],
        "apply to what ffmpeg encodes",
    );
    fails_with(
        &args,
        &["--input", "rtmp://127.0.0.1:1935/live"],
        "expected rtmp://HOST:PORT/APP/KEY",
    );
    fails_with(
        &args,
        &["--input", "srt://127.0.0.1:9000?mode=caller"],
        "the broadcaster listens (mode=listener)",
    );
    // A malformed size is clap's usage error, naming the flag.
    let out = Command::new(BIN)
        .args(&args)
        .args(["--webcam", "/dev/video99", "--video-size", "13x7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--video-size") && err.contains("expected WxH"),
        "{err}"
    );
}

#[test]
fn a_busy_ingest_port_is_one_line_without_the_stream_key() {
    if std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must have ffmpeg");
        eprintln!("skipping: ffmpeg is not installed");
        return;
    }
    let (_tmp, args) = setup();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let url = format!("rtmp://127.0.0.1:{port}/live/hush-hush-key");
    let out = Command::new(BIN)
        .args(&args)
        .args(["--input", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("miostream-broadcaster: ffmpeg failed"),
        "{err}"
    );
    assert!(!err.contains("hush-hush-key"), "the key leaked: {err}");
    drop(busy);
}
