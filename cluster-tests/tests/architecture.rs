//! The "must not depend on" rules of ARCHITECTURE.md, checked against each crate's direct
//! `[dependencies]`, and every workspace member named in ARCHITECTURE.md.

use std::path::Path;

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The names in the `[dependencies]` table of `<crate>/Cargo.toml`.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).expect("read manifest");
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or_default().trim();
            names.push(name.to_owned());
        }
    }
    assert!(
        !names.is_empty() || krate == "proto",
        "{krate} has no [dependencies]?"
    );
    names
}

const MEMBERS: [&str; 7] = [
    "node",
    "raft-store",
    "api",
    "proto",
    "cluster-tests",
    "verifier",
    "ledgerctl",
];

#[test]
fn crates_depend_only_on_what_they_may() {
    let forbidden: [(&str, &[&str]); 6] = [
        (
            "proto",
            &["raft-store", "api", "node", "verifier", "openraft", "sled"],
        ),
        (
            "raft-store",
            &["tonic", "axum", "proto", "api", "node", "reqwest"],
        ),
        ("api", &["openraft", "sled", "tonic", "proto", "node"]),
        (
            "verifier",
            &[
                "sled",
                "openraft",
                "tonic",
                "tokio",
                "axum",
                "raft-store",
                "api",
                "node",
                "proto",
                "reqwest",
            ],
        ),
        (
            "ledgerctl",
            &[
                "sled",
                "openraft",
                "tonic",
                "axum",
                "raft-store",
                "api",
                "node",
                "proto",
            ],
        ),
        (
            "cluster-tests",
            &[
                "raft-store",
                "api",
                "node",
                "proto",
                "verifier",
                "openraft",
                "tonic",
            ],
        ),
    ];
    let mut violations = Vec::new();
    for (krate, banned) in forbidden {
        for dependency in dependencies(krate) {
            if banned.contains(&dependency.as_str()) {
                violations.push(format!("{krate} depends on {dependency}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "ARCHITECTURE.md rules broken: {violations:?}"
    );
}

#[test]
fn architecture_md_names_every_member() {
    let text =
        std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    for member in MEMBERS {
        assert!(
            text.contains(&format!("### `{member}`")),
            "ARCHITECTURE.md has no section for {member}"
        );
    }
    let manifest =
        std::fs::read_to_string(workspace().join("Cargo.toml")).expect("read Cargo.toml");
    for member in MEMBERS {
        assert!(
            manifest.contains(&format!("\"{member}\"")),
            "{member} is not a workspace member"
        );
    }
}
