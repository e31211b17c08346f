//! The command line: configuration errors exit with 64 and name the key; migrate works alone.

use std::process::Command;

fn flowgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.env_remove("FLOWGATE_DATABASE_URL").env_remove("FLOWGATE_LISTEN");
    cmd
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let out = flowgate().args(["check-config", "--listen", "not-an-address"]).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`listen`") && err.contains("--listen"), "{err}");

    let out = flowgate().args(["check-config"]).env("FLOWGATE_LOG_FORMAT", "xml").output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`log_format`") && err.contains("FLOWGATE_LOG_FORMAT"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("flowgate.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\ncors_origin = [\"https://a.example\"]\n").expect("write");
    let out = flowgate().arg("check-config").arg("--config").arg(&file).output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cors_origin"));

    std::fs::write(&file, "listen = \"127.0.0.1:0\"\ncors_origins = [\"https://a.example\"]\n").expect("write");
    let out = flowgate().arg("check-config").arg("--config").arg(&file).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let out = flowgate()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert"));
}

#[tokio::test]
async fn migrate_prints_the_schema_version_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = crate::harness::isolated_database().await;
    for _ in 0..2 {
        let mut cmd = flowgate();
        cmd.arg("migrate").arg("--data-dir").arg(dir.path());
        if let Some(url) = &url {
            cmd.arg("--database-url").arg(url);
        }
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("schema version m"));
    }
    if url.is_none() {
        assert!(dir.path().join("flowgate.db").exists());
    }
}
