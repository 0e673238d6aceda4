//! The broker's modules keep their layers: imports point down this table, never up it, and two
//! modules of one layer never import each other. `docs/architecture.md` explains the order; a
//! new module goes into the table (the check fails on a file the table does not cover).

use std::path::Path;
use switchboard_testkit::layers::{Layer, check};

const fn at(module: &'static str, layer: u32) -> Layer {
    Layer { module, layer }
}

/// Top to bottom. A module may import only modules of a greater number.
const TABLE: &[Layer] = &[
    at("lib", 0),
    // Composes the components' own configuration types.
    at("config", 1),
    // The HTTP listener's router: the only place that knows every frontend on it.
    at("http::router", 2),
    // The ways in, and the drivers that act on their own timers.
    at("http::api", 3),
    at("http::x2go", 3),
    at("http::ui", 3),
    at("gateway", 3),
    at("mgmt", 3),
    at("sweeper", 3),
    at("probe", 3),
    // What the HTTP listener's frontends share.
    at("http", 4),
    // What every web surface shares (the HTTP listener's and the gateway's).
    at("web", 5),
    // Every operator action, once.
    at("actions", 6),
    // Adapters: agent links, Kubernetes pools.
    at("agents", 7),
    at("kubernetes", 7),
    at("engine", 8),
    at("metrics", 9),
    at("snapshot", 10),
    // Leaves.
    at("audit", 11),
    at("tokens", 11),
    at("pki", 11),
    at("tls", 12),
    at("sync", 12),
];

#[test]
fn broker_imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = check(&src, TABLE).expect("the broker's sources are readable");
    let lines: Vec<String> = bad.iter().map(ToString::to_string).collect();
    assert!(
        bad.is_empty(),
        "imports that break the broker's layers (see docs/architecture.md):\n{}",
        lines.join("\n")
    );
}
