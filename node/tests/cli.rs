//! The `ledgerd` command line: help, and one-line errors for bad configuration that clap and
//! `Config::validate` catch before anything starts. (Also makes `cargo test --workspace` build
//! the `ledgerd` binary that `cluster-tests` runs.)

use std::process::Command;

fn ledgerd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(args)
        .output()
        .expect("run ledgerd")
}

#[test]
fn help_documents_every_option_with_its_default() {
    let output = ledgerd(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--id",
        "--data-dir",
        "--http-addr",
        "--grpc-addr",
        "--bootstrap",
        "--heartbeat-ms",
        "--write-deadline-ms",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
    assert!(
        help.contains("[default: 250]"),
        "--help does not show the heartbeat default"
    );
}

#[test]
fn invalid_values_give_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--id", "0", "--data-dir", data],
            "--id must be a positive integer",
        ),
        (
            &[
                "--id",
                "1",
                "--data-dir",
                data,
                "--heartbeat-ms",
                "500",
                "--election-timeout-min-ms",
                "400",
            ],
            "--election-timeout-min-ms",
        ),
        (
            &[
                "--id",
                "1",
                "--data-dir",
                data,
                "--http-addr",
                "127.0.0.1:7000",
                "--grpc-addr",
                "127.0.0.1:7000",
            ],
            "both 127.0.0.1:7000",
        ),
    ];
    for (args, expected) in cases {
        let output = ledgerd(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("ledgerd: error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
