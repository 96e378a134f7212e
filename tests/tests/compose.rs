//! docker-compose.yml is valid and has what docs/OPERATIONS.md promises. There is no Docker
//! engine on CI machines, so the file is checked with `docker-compose config` (Debian's
//! docker-compose, which scripts/test.sh installs), not started.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose` with these arguments in the repository root; `None` when it is not
/// installed and the run does not require it.
fn compose(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("docker-compose").args(["-f", "docker-compose.yml"]).args(args).current_dir(root()).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var_os("EXACTLY_REQUIRE_COMPOSE").is_none() => {
            eprintln!("SKIPPED: docker-compose cannot run ({e}); scripts/test.sh installs it");
            None
        }
        Err(e) => panic!("docker-compose cannot run: {e}"),
    }
}

#[test]
fn the_compose_file_is_valid() {
    let Some(out) = compose(&["config", "-q"]) else { return };
    assert!(out.status.success(), "docker-compose config failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_services_and_ports_the_readme_names_are_in_it() {
    let Some(out) = compose(&["config", "--services"]) else { return };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let services = String::from_utf8(out.stdout).unwrap();
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    // The resolved configuration, where published ports are spelled one way.
    let config = String::from_utf8(compose(&["config"]).unwrap().stdout).unwrap();
    let readme = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    let section = readme.split("## Playground").nth(1).expect("docs/OPERATIONS.md has a Playground section");
    let section = section.split("\n## ").next().unwrap();
    // Rows of the page's table: | `service` | what | port, port |
    let mut named = 0;
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let service = row.split('`').nth(1).unwrap();
        assert!(services.contains(&service), "docs/OPERATIONS.md names service {service}, compose has {services:?}");
        let ports = row.split('|').nth(3).unwrap_or_default();
        for port in ports.split(',').map(str::trim).filter(|p| !p.is_empty() && *p != "-") {
            assert!(
                config.contains(&format!("published: {port}"))
                    || config.contains(&format!("published: '{port}'"))
                    || config.contains(&format!("- {port}:"))
                    || config.contains(&format!("{port}:{port}")),
                "docs/OPERATIONS.md says {service} listens on {port}; the compose file does not publish it:\n{config}"
            );
        }
        named += 1;
    }
    assert!(named >= 5, "the Playground table lists {named} services");
}
