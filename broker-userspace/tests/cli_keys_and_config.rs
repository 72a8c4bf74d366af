//! `generate-key` and `check-config` through the real binary.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use broker_contracts::{keys, protocol};

fn broker(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blockhost-broker"))
        .args(args)
        .env_remove("BLOCKHOST_BROKER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_key_writes_a_private_key_and_prints_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecies.key");
    let (code, out, _) = broker(&["generate-key", "-o", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = keys::read_secret(&path).unwrap();
    let public = out.trim();
    assert_eq!(public.len(), 130);
    assert_eq!(public, hex::encode(protocol::public_key(&secret).unwrap()));
    assert!(
        !out.contains(&hex::encode(secret)),
        "the secret was printed"
    );

    // An existing key is never overwritten without --force.
    let (code, _, err) = broker(&["generate-key", "-o", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("exists; pass --force"), "{err}");
    assert_eq!(keys::read_secret(&path).unwrap(), secret);
    let (code, out2, _) = broker(&["generate-key", "-o", path.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0);
    assert_ne!(out2, out);
}

fn write(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_config_reports_ok_or_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ecies = d.join("ecies.key");
    assert_eq!(
        broker(&["generate-key", "-o", ecies.to_str().unwrap()]).0,
        0
    );
    write(
        &d.join("operator.key"),
        &format!("{}\n", "33".repeat(32)),
        0o600,
    );
    write(
        &d.join("wg.key"),
        "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
        0o600,
    );
    let sized = |prefix: &str, size: u8| {
        format!(
            "[broker]\nupstream_interface = \"eth0\"\nupstream_prefix = \"{prefix}\"\nallocation_size = {size}\n\n\
             [wireguard]\nendpoint = \"broker.example:51820\"\nprivate_key_file = \"{d}/wg.key\"\n\n\
             [database]\npath = \"{d}/broker.redb\"\n\n\
             [onchain]\nrpc_url = \"https://rpc.example\"\nchain_id = 11155111\n\
             requests_contract = \"0x8464135c8F25Da09e49BC8782676a84730C318bC\"\n\
             operator_key_file = \"{d}/operator.key\"\necies_key_file = \"{d}/ecies.key\"\n",
            d = d.display()
        )
    };
    let config = |prefix: &str| sized(prefix, 120);
    let path = d.join("config.toml");
    write(&path, &config("2001:db8:100::/48"), 0o644);
    let (code, out, err) = broker(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok — /120s of 2001:db8:100::/48 on eth0"),
        "{out}"
    );

    // The router's ::1 and the gateway ::2 would be clients' slots.
    for size in [127, 128] {
        write(&path, &sized("2001:db8:100::/120", size), 0o644);
        let (code, _, err) = broker(&["check-config", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "/{size}: {err}");
        assert_eq!(
            err.trim_end(),
            format!(
                "error: {}: [broker] allocation_size: allocation size /{size} is too long: /126 at most, since the broker's own prefix (the pool's first) must hold the router's ::1 and the gateway ::2, which a /{size} would give to clients",
                path.display()
            )
        );
    }

    write(&path, &config("2001:db8:100::/130"), 0o644);
    std::fs::set_permissions(&ecies, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, err) = broker(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines.iter().all(|l| l.starts_with("error: ")));
    assert!(lines.iter().any(|l| l.contains("upstream_prefix")), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ecies_key_file") && l.contains("group or others")),
        "{err}"
    );
}
