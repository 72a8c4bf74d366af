//! What the Debian package ships from `debian/`, checked against the code
//! it describes: the example configuration is read by the daemon's own
//! parser (every key in it exists, every key of the configuration is in
//! it), and the systemd unit's exposure (`systemd-analyze security`) stays
//! at most 3.0.

use std::{collections::BTreeSet, path::Path, process::Command};

use broker_userspace::config::Config;

const DEBIAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian");

fn example() -> String {
    std::fs::read_to_string(Path::new(DEBIAN).join("config.toml.example"))
        .expect("debian/config.toml.example")
}

/// The example with every commented-out key (and `[api]`) turned on.
fn everything_on(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads `text` as `run` would (the key files are not read), with the
/// files it names under /etc/blockhost-broker present (mode 0600) in a
/// temporary directory instead.
fn load(text: &str) -> Result<Config, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let etc = format!("{}/", dir.path().display());
    let text = text.replace("/etc/blockhost-broker/", &etc);
    for word in text.split('"') {
        if let Some(name) = word.strip_prefix(&etc) {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.path().join(name))
                .unwrap();
        }
    }
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load_without_keys(&path).map_err(|e| e.to_string())
}

#[test]
fn the_example_configuration_is_read_by_the_daemons_parser() {
    let text = example();
    load(&text).unwrap_or_else(|e| panic!("debian/config.toml.example as shipped: {e}"));
    let all = everything_on(&text);
    assert!(all.contains("\n[api]"), "the [api] section is not offered");
    load(&all).unwrap_or_else(|e| panic!("with every key turned on: {e}\n{all}"));
}

/// `section.key` of every key in a TOML text.
fn keys(text: &str) -> BTreeSet<String> {
    let table: toml::Table = toml::from_str(text).expect("TOML");
    let mut keys = BTreeSet::new();
    for (section, value) in &table {
        if let toml::Value::Table(inner) = value {
            keys.extend(inner.keys().map(|k| format!("{section}.{k}")));
        }
    }
    keys
}

#[test]
fn every_key_of_the_configuration_is_in_the_example() {
    let all = everything_on(&example());
    let config = load(&all).unwrap_or_else(|e| panic!("{e}"));
    // Serialised, the configuration names every key it has (defaults
    // included): a key added to it and not to the example shows here.
    let serialised = toml::to_string(&config).expect("serialising the configuration");
    let missing: Vec<_> = keys(&serialised).difference(&keys(&all)).cloned().collect();
    assert!(
        missing.is_empty(),
        "not in debian/config.toml.example: {missing:?}"
    );
}

/// `systemd-analyze security --offline=true` of the unit, its overall
/// exposure (0 safest, 10 least).
#[test]
fn the_units_exposure_is_at_most_3() {
    let unit = Path::new(DEBIAN).join("blockhost-broker.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let exposure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    eprintln!("blockhost-broker.service: exposure {exposure}");
    assert!(exposure <= 3.0, "{line}\n{text}");
}
