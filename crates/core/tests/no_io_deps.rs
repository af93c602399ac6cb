//! Architecture invariant: the domain core depends on no async runtime, no
//! database, no HTTP stack. Checked on the resolved dependency tree.

#[test]
fn core_has_no_io_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "stowage-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        // At run time: a compiled test binary may be shared by checkouts.
        .current_dir(std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    for forbidden in [
        "tokio",
        "sqlx",
        "axum",
        "hyper",
        "mio",
        "reqwest",
        "ureq",
        "postgres-protocol",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(forbidden)),
            "stowage-core must not depend on {forbidden}:\n{tree}"
        );
    }
    assert!(tree.contains("stowage-core"));
}
