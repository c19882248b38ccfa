//! The command line itself, without a cluster: `--help` on every command (with the exit
//! codes), and the exit codes of usage and configuration errors (2) and of an unreachable
//! cluster (5). The codes against a live cluster are in cluster-tests t20.

use std::process::Command;
use std::process::Output;

fn ledgerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ledgerctl"))
        .args(args)
        .env_remove("LEDGER_URL")
        .env_remove("LEDGER_API_KEY")
        .env_remove("LEDGERCTL_CONFIG")
        // No default config file is found.
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run ledgerctl")
}

fn code(args: &[&str]) -> (i32, String) {
    let output = ledgerctl(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

const COMMANDS: &[&[&str]] = &[
    &[],
    &["report"],
    &["import"],
    &["activity"],
    &["operators"],
    &["operators", "create"],
    &["operators", "get"],
    &["keys"],
    &["keys", "create"],
    &["keys", "revoke"],
    &["agents"],
    &["agents", "create"],
    &["agents", "get"],
    &["agents", "deactivate"],
    &["cluster"],
    &["cluster", "status"],
    &["cluster", "add-node"],
    &["cluster", "remove-node"],
    &["cluster", "transfer-leader"],
    &["verify"],
    &["verify", "audit"],
    &["verify", "receipt"],
    &["verify", "bundle"],
    &["export"],
];

#[test]
fn every_command_has_help_with_the_exit_codes() {
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let output = ledgerctl(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(stdout.contains("Usage: ledgerctl"), "{args:?}: {stdout}");
        assert!(stdout.contains("5  unavailable"), "{args:?}: {stdout}");
    }
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    // clap: an unknown flag, a missing argument, a batch size past the server's limit.
    assert_eq!(code(&["cluster", "status", "--bogus"]).0, 2);
    assert_eq!(code(&["import"]).0, 2);
    assert_eq!(code(&["import", "x.jsonl", "--batch-size", "1001"]).0, 2);
    assert_eq!(code(&["import", "x.jsonl", "--batch-size", "0"]).0, 2);
    // No URL anywhere.
    let (exit, stderr) = code(&["cluster", "status"]);
    assert_eq!(exit, 2, "{stderr}");
    assert!(stderr.contains("no node URL"), "{stderr}");
    // A URL without a scheme.
    assert_eq!(code(&["--url", "127.0.0.1:1", "cluster", "status"]).0, 2);
    // A config file that is missing or has an unknown field.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_string_lossy();
    assert_eq!(code(&["--config", &missing, "cluster", "status"]).0, 2);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "keys = \"x\"\n").expect("write");
    let (exit, stderr) = code(&["--config", &bad.to_string_lossy(), "cluster", "status"]);
    assert_eq!(exit, 2, "{stderr}");
    assert!(stderr.contains("keys"), "{stderr}");
    // A write without a key; an import of a file that does not exist.
    let url = dead_url();
    let (exit, stderr) = code(&[
        "--url",
        &url,
        "report",
        "--asn",
        "ASN-2026-0004-8271-L",
        "--event-type",
        "startup",
    ]);
    assert_eq!(exit, 2, "{stderr}");
    assert!(stderr.contains("needs an API key"), "{stderr}");
    let (exit, stderr) = code(&[
        "--url",
        &url,
        "--key",
        "k",
        "import",
        &dir.path().join("none.jsonl").to_string_lossy(),
    ]);
    assert_eq!(exit, 2, "{stderr}");
    // --metadata that is not a JSON object.
    let (exit, _) = code(&[
        "--url",
        &url,
        "--key",
        "k",
        "report",
        "--asn",
        "A",
        "--event-type",
        "x",
        "--metadata",
        "[1]",
    ]);
    assert_eq!(exit, 2);
}

#[test]
fn no_reachable_node_exits_5_after_trying_every_url() {
    let (a, b) = (dead_url(), dead_url());
    let (exit, stderr) = code(&["--url", &a, "--url", &b, "cluster", "status"]);
    assert_eq!(exit, 5, "{stderr}");
    assert!(stderr.contains(&a) && stderr.contains(&b), "{stderr}");
    // The environment is read when there is no flag; a comma-separated list works too.
    let output = Command::new(env!("CARGO_BIN_EXE_ledgerctl"))
        .args(["agents", "get", "ASN-2026-0004-8271-L"])
        .env("LEDGER_URL", format!("{a},{b}"))
        .env_remove("LEDGERCTL_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .expect("run ledgerctl");
    assert_eq!(output.status.code(), Some(5));
    // An import that cannot reach the cluster records nothing and says so.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, "{\"asn\":\"A\",\"event_type\":\"x\"}\n").expect("write");
    let file = file.to_string_lossy();
    let (exit, stderr) = code(&["--url", &a, "--key", "k", "import", &file]);
    assert_eq!(exit, 5, "{stderr}");
    // The batch size at its limits is accepted (it fails only at the network).
    for size in ["1", "1000"] {
        let args = [
            "--url",
            &a,
            "--key",
            "k",
            "import",
            &file,
            "--batch-size",
            size,
        ];
        assert_eq!(code(&args).0, 5, "--batch-size {size}");
    }
}
