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
