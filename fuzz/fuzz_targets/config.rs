//! The configuration file as `Config::load` reads it (`Config::parse`, the
//! same code after the file is read): every problem one line, and a file it
//! accepts is one whose `Config`, written back with `toml::to_string` (as
//! set-up and the tests write configurations), reads as the same `Config`.
//!
//! The key files the configuration names must exist with mode 0600: the
//! target writes them once under /tmp/blockhost-broker-fuzz/, where the
//! seed configurations (fuzz/corpus/config/) point.
#![no_main]

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Once};

use broker_userspace::config::Config;
use libfuzzer_sys::fuzz_target;

const KEY_DIR: &str = "/tmp/blockhost-broker-fuzz";

fn write_keys() {
    std::fs::create_dir_all(KEY_DIR).expect("creating the key directory");
    for (name, content) in [
        ("ecies.key", "11".repeat(32)),
        ("operator.key", format!("0x{}", "22".repeat(32))),
        (
            "wg.key",
            "aE3FDH0TQMnS9yRLbqcyBe1IgZ4Fd51mbHPaMxQn81A=".to_string(),
        ),
    ] {
        let path = Path::new(KEY_DIR).join(name);
        std::fs::write(&path, format!("{content}\n")).expect("writing a key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600 a key file");
    }
}

fuzz_target!(|data: &[u8]| {
    static KEYS: Once = Once::new();
    KEYS.call_once(write_keys);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/blockhost-broker/config.toml");
    match Config::parse(path, text) {
        Ok(config) => {
            let written = toml::to_string(&config).expect("a checked Config serialises");
            match Config::parse(path, &written) {
                Ok(again) => assert_eq!(again, config, "written back as:\n{written}"),
                Err(e) => panic!("its own writing is refused: {e}\nwritten:\n{written}"),
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "refused without a reason");
            for problem in &e.problems {
                assert!(!problem.trim().is_empty(), "an empty problem: {e:?}");
                assert!(
                    !problem.contains('\n'),
                    "a problem of several lines: {problem:?}"
                );
            }
        }
    }
});
