//! `Config::load` on files written by hand and by `Config` itself.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        f.key("ecies.key", &"11".repeat(32), 0o600);
        f.key("operator.key", &format!("0x{}", "22".repeat(32)), 0o600);
        let wg = wireguard_control::Key::generate_private().to_base64();
        f.key("wg.key", &wg, 0o600);
        f
    }

    fn key(&self, name: &str, content: &str, mode: u32) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{content}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn text(&self) -> String {
        let d = self.dir.path().display();
        format!(
            r#"
[broker]
upstream_interface = "eth0"
upstream_prefix = "2001:db8:100::/48"
allocation_size = 120

[wireguard]
endpoint = "203.0.113.10:51820"
private_key_file = "{d}/wg.key"

[database]
path = "{d}/broker.redb"

[onchain]
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
requests_contract = "0x8464135c8F25Da09e49BC8782676a84730C318bC"
legacy_requests_contracts = ["0x5FbDB2315678afecb367f032d93F642f64180aa3"]
operator_key_file = "{d}/operator.key"
ecies_key_file = "{d}/ecies.key"
"#
        )
    }

    /// The valid text with `lines` added to each named section (added
    /// itself when the text has no such section).
    fn text_with(&self, keys: &[(&str, &str)]) -> String {
        keys.iter().fold(self.text(), |text, (section, lines)| {
            let header = format!("[{section}]");
            if text.contains(&header) {
                text.replace(&header, &format!("{header}\n{lines}"))
            } else {
                format!("{text}\n{header}\n{lines}\n")
            }
        })
    }

    fn load(&self, text: &str) -> Result<Config, ConfigErrors> {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    fn problems(&self, text: &str) -> Vec<String> {
        self.load(text).unwrap_err().problems
    }
}

#[test]
fn loads_a_valid_file_with_defaults() {
    let f = Fixture::new();
    let c = f.load(&f.text()).unwrap();
    assert_eq!(c.broker.pool.allocation_size(), 120);
    assert_eq!(c.broker.ndp_mode, AttachMode::Auto);
    assert_eq!(c.wireguard.interface, "wg-broker");
    assert_eq!(c.wireguard.handshake_timeout_secs, 120);
    assert_eq!(c.onchain.legacy_requests_contracts.len(), 1);
    assert_eq!(c.onchain.poll_interval_secs, 5);
    assert_eq!(c.onchain.confirm, Confirm::Blocks(1));
    assert_eq!(c.api, None);
    assert_eq!(c.broker.control_socket, None);
    assert!(c.broker.pipeline_answers);
    assert_eq!(
        c.onchain.low_balance_wei,
        alloy::primitives::utils::parse_ether("0.01").unwrap()
    );
}

/// What `toml::to_string` writes, `Config::load` reads back as the same
/// `Config`, and writing that again gives the same text: with the
/// defaults, and with every optional key set to something else.
#[test]
fn a_serialised_config_loads_as_itself() {
    let f = Fixture::new();
    let all_keys = f.text_with(&[
        (
            "broker",
            "ndp_mode = \"tc\"\nndp_router_flag = false\nndp_vlan = 42\n\
             ndp_pin_dir = \"/sys/fs/bpf/other\"\ndns_zone = \"tunnels.example\"\n\
             control_socket = \"/run/other/control.sock\"\npipeline_answers = false",
        ),
        (
            "wireguard",
            "interface = \"wg9\"\nlisten_port = 51999\n\
             implementation = \"userspace\"\nhandshake_timeout_secs = 30\n\
             allow_to_broker = [\"tcp/8080\", \"udp/5000-5010\"]",
        ),
        (
            "api",
            "listen = \"[::1]:8080\"\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"",
        ),
        (
            "manager",
            "admins = [\"0x70997970C51812dc3A010C7d01b50e0d17dc79C8\"]\nsession_secs = 600",
        ),
        (
            "onchain",
            "registry_contract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n\
             poll_interval_secs = 2\nconfirm = \"finalized\"\nstart_request_id = 7\n\
             max_requests_per_poll = 9\nlow_balance_eth = \"1.5\"",
        ),
    ]);
    for text in [f.text(), all_keys.clone()] {
        let config = f.load(&text).unwrap();
        let written = toml::to_string(&config).unwrap();
        let reloaded = f
            .load(&written)
            .unwrap_or_else(|e| panic!("{e}\n{written}"));
        assert_eq!(reloaded, config, "{written}");
        assert_eq!(toml::to_string(&reloaded).unwrap(), written);
    }
    let c = f.load(&all_keys).unwrap();
    assert_eq!(c.broker.ndp_mode, AttachMode::Tc);
    assert!(!c.broker.pipeline_answers);
    assert_eq!(
        c.wireguard.implementation,
        WireguardImplementation::Userspace
    );
    assert_eq!(c.api.unwrap().listen, "[::1]:8080".parse().unwrap());
    assert!(c.onchain.registry_contract.is_some());
    assert_eq!(c.manager.admins.len(), 1);
    assert_eq!(c.manager.session_secs, 600);
    assert_eq!(c.onchain.max_requests_per_poll, 9);
    assert_eq!(c.onchain.confirm, Confirm::Finalized);
    assert_eq!(
        c.broker.control_socket.as_deref(),
        Some(Path::new("/run/other/control.sock"))
    );
    assert_eq!(
        c.onchain.low_balance_wei,
        U256::from(1_500_000_000_000_000_000u128)
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let f = Fixture::new();
    let text = f.text().replace(
        "allocation_size = 120",
        "allocation_size = 120\nalocation = 1",
    );
    let p = f.problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("line 6: unknown field `alocation`"),
        "{p:?}"
    );
    let p = f.problems(&(f.text() + "\n[extra]\nx = 1\n"));
    assert!(p[0].contains("unknown field `extra`"), "{p:?}");
}

#[test]
fn every_problem_is_reported_once_on_its_own_line() {
    let f = Fixture::new();
    f.key("ecies.key", &"11".repeat(32), 0o644);
    f.key("operator.key", "not hex", 0o600);
    let text = f
        .text()
        .replace("2001:db8:100::/48", "2001:db8:100::/4x")
        .replace("203.0.113.10:51820", "no-port")
        .replace("0x8464135c8F25Da09e49BC8782676a84730C318bC", "0x1234");
    let p = f.problems(&text);
    let expect = [
        "upstream_prefix \"2001:db8:100::/4x\" is not an IPv6 prefix",
        "endpoint \"no-port\" is not host:port",
        "requests_contract \"0x1234\" is not an address",
        "operator_key_file: key file",
        "ecies_key_file: key file",
    ];
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    for e in expect {
        assert!(p.iter().any(|line| line.contains(e)), "{e}: {p:#?}");
    }
    assert!(p.iter().all(|line| !line.contains('\n')));
    assert!(
        p.iter().any(|l| l.contains("readable by group or others")),
        "{p:#?}"
    );
    let shown = ConfigErrors {
        path: "/c".into(),
        problems: p,
    }
    .to_string();
    assert!(!shown.contains("not hex"), "key content leaked: {shown}");
}

#[test]
fn allocation_size_must_be_longer_than_the_upstream_prefix() {
    let f = Fixture::new();
    for (size, ok) in [
        ("48", false),
        ("40", false),
        ("49", true),
        ("126", true),
        ("129", false),
    ] {
        let text = f.text().replace(
            "allocation_size = 120",
            &format!("allocation_size = {size}"),
        );
        assert_eq!(f.load(&text).is_ok(), ok, "/{size}");
    }
    let text = f.text().replace("2001:db8:100::/48", "2001:db8:100::1/48");
    assert!(f.problems(&text)[0].contains("did you mean 2001:db8:100::/48?"));
}

#[test]
fn retention_days_defaults_to_90_and_is_bounded() {
    let f = Fixture::new();
    let c = f.load(&f.text()).unwrap();
    assert_eq!(c.database.retention_days, 90);
    let with = |days: &str| {
        f.text().replace(
            "[database]\n",
            &format!("[database]\nretention_days = {days}\n"),
        )
    };
    assert_eq!(f.load(&with("7")).unwrap().database.retention_days, 7);
    for bad in ["0", "3651"] {
        assert_eq!(
            f.problems(&with(bad)),
            [
                "[database] retention_days must be 1 to 3650 (finished requests and audit entries are kept that long, then pruned)"
            ],
            "{bad}"
        );
    }
}

/// With /127 or /128 the broker's slot 0 no longer holds the router's ::1
/// and the gateway ::2: clients would be given them.
#[test]
fn allocation_sizes_127_and_128_are_refused_with_the_reason() {
    let f = Fixture::new();
    for size in [127, 128] {
        let text = f.text().replace(
            "allocation_size = 120",
            &format!("allocation_size = {size}"),
        );
        let p = f.problems(&text);
        assert_eq!(
            p,
            [format!(
                "[broker] allocation_size: allocation size /{size} is too long: /126 at most, since the broker's own prefix (the pool's first) must hold the router's ::1 and the gateway ::2, which a /{size} would give to clients"
            )],
            "/{size}"
        );
    }
}

#[test]
fn missing_and_malformed_key_files() {
    let f = Fixture::new();
    std::fs::remove_file(f.dir.path().join("wg.key")).unwrap();
    let p = f.problems(&f.text());
    assert!(
        p[0].contains("private_key_file") && p[0].contains("No such file"),
        "{p:?}"
    );
    f.key("wg.key", "short", 0o600);
    let p = f.problems(&f.text());
    assert!(p[0].contains("WireGuard private key"), "{p:?}");
    f.key("ecies.key", &"00".repeat(32), 0o600);
    f.key(
        "wg.key",
        &wireguard_control::Key::generate_private().to_base64(),
        0o600,
    );
    let p = f.problems(&f.text());
    assert!(p[0].contains("not a valid secp256k1 secret key"), "{p:?}");
}

/// The operator's commands load the file without reading the keys (their
/// users may not be allowed to); a key file open to others still fails.
#[test]
fn the_operator_commands_load_without_reading_the_keys() {
    let f = Fixture::new();
    f.key("operator.key", "not hex", 0o600);
    let path = f.dir.path().join("config.toml");
    std::fs::write(&path, f.text()).unwrap();
    assert!(Config::load(&path).is_err());
    let c = Config::load_without_keys(&path).unwrap();
    assert_eq!(
        c.onchain.operator_key_file,
        f.dir.path().join("operator.key")
    );
    f.key("ecies.key", &"11".repeat(32), 0o644);
    let e = Config::load_without_keys(&path).unwrap_err();
    assert!(e.problems[0].contains("readable by group or others"), "{e}");
}

#[test]
fn malformed_typed_values_are_collected_with_the_accepted_forms() {
    let f = Fixture::new();
    let text = f
        .text_with(&[
            ("broker", "ndp_mode = \"xdp\""),
            ("wireguard", "implementation = \"go\""),
            ("api", "listen = \"localhost\""),
            ("broker", "control_socket = \"run/control.sock\""),
            (
                "onchain",
                "registry_contract = \"0x0000000000000000000000000000000000000000\"\n\
                 low_balance_eth = \"lots\"",
            ),
        ])
        .replace("http://127.0.0.1:8545", "ws://127.0.0.1:8545");
    let p = f.problems(&text);
    let expect = [
        "[broker] ndp_mode \"xdp\" is not one of auto, driver, generic, tc",
        "[broker] control_socket \"run/control.sock\" must be an absolute path of at most 107 bytes",
        "[wireguard] implementation \"go\" is not one of auto, kernel, userspace",
        "[api] listen \"localhost\" is not an address:port",
        "[onchain] rpc_url \"ws://127.0.0.1:8545\" is not an http(s) URL",
        "[onchain] registry_contract must not be the zero address",
        "[onchain] low_balance_eth \"lots\" is not an amount of ETH (e.g. \"0.05\")",
    ];
    assert_eq!(p, expect, "{p:#?}");
}

/// The file and the command line (`ndp serve --mode`) spell the enums alike.
#[test]
fn enums_are_spelt_alike_in_the_file_and_on_the_command_line() {
    fn check<E: ValueEnum + Serialize>() {
        for v in E::value_variants() {
            let name = v.to_possible_value().unwrap();
            assert_eq!(serde_json::to_value(v).unwrap(), name.get_name());
        }
    }
    check::<AttachMode>();
    check::<WireguardImplementation>();
    assert_eq!(WireguardImplementation::Userspace.to_string(), "userspace");
}

#[test]
fn the_onchain_endpoint_is_read_alone() {
    let f = Fixture::new();
    let path = f.dir.path().join("partial.toml");
    // Only [onchain] matters: an unfinished file still names its chain.
    std::fs::write(
        &path,
        "[broker]\nunknown = 1\n\n[onchain]\nrpc_url = \"http://node:8545\"\nchain_id = 5\n",
    )
    .unwrap();
    assert_eq!(
        OnchainEndpoint::load(&path).unwrap(),
        OnchainEndpoint {
            rpc_url: Some("http://node:8545".into()),
            chain_id: Some(5),
        }
    );
    std::fs::write(&path, "[database]\npath = \"/x\"\n").unwrap();
    assert_eq!(
        OnchainEndpoint::load(&path).unwrap(),
        OnchainEndpoint::default()
    );
    std::fs::write(&path, "[onchain]\nchain_id = \"five\"\n").unwrap();
    let e = OnchainEndpoint::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: line 2: ", path.display())),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = OnchainEndpoint::load(&f.dir.path().join("missing.toml")).unwrap_err();
    assert!(e.to_string().contains("No such file or directory"), "{e}");
}

#[test]
fn the_api_listens_on_loopback_by_default_and_elsewhere_only_when_told() {
    let f = Fixture::new();
    let c = f.load(&f.text_with(&[("api", "")])).unwrap();
    let api = c.api.unwrap();
    assert_eq!(api.listen, super::DEFAULT_API_LISTEN.parse().unwrap());
    assert!(!api.insecure_plaintext);
    let p = f.problems(&f.text_with(&[("api", "listen = \"0.0.0.0:8080\"")]));
    assert_eq!(
        p,
        [
            "[api] listen 0.0.0.0:8080 is not a loopback address: serving it needs TLS \
             (tls_cert and tls_key), or insecure_plaintext = true to send the API's tokens in clear"
        ]
    );
    let p = f.problems(&f.text_with(&[("api", "tls_cert = \"/etc/c.pem\"")]));
    assert_eq!(
        p,
        ["[api] tls_cert and tls_key go together: give both, or neither"]
    );
    let tls = "listen = \"0.0.0.0:8443\"\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"";
    let c = f.load(&f.text_with(&[("api", tls)])).unwrap();
    assert_eq!(c.api.unwrap().tls_key, Some("/etc/k.pem".into()));
    let c = f
        .load(&f.text_with(&[(
            "api",
            "listen = \"[2001:db8::1]:8080\"\ninsecure_plaintext = true",
        )]))
        .unwrap();
    assert!(c.api.unwrap().insecure_plaintext);
}

#[test]
fn the_manager_is_closed_by_default_and_its_admins_are_checked() {
    let f = Fixture::new();
    let c = f.load(&f.text()).unwrap();
    assert_eq!(c.manager, Manager::default());
    assert!(c.manager.admins.is_empty());
    assert!(!toml::to_string(&c).unwrap().contains("[manager]"));
    let admin = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    let c = f
        .load(&f.text_with(&[("api", ""), ("manager", &format!("admins = [\"{admin}\"]"))]))
        .unwrap();
    assert_eq!(c.manager.admins, [admin.parse::<Address>().unwrap()]);
    assert_eq!(c.manager.session_secs, DEFAULT_SESSION_SECS);
    let p = f.problems(&f.text_with(&[
        ("api", ""),
        (
            "manager",
            &format!(
                "admins = [\"0x12\", \"{admin}\", \"{}\", \"0x0000000000000000000000000000000000000000\"]\nsession_secs = 0",
                admin.to_lowercase()
            ),
        ),
    ]));
    assert_eq!(
        p,
        [
            "[manager] admins \"0x12\" is not an Ethereum address (0x and 40 hex digits)",
            &format!("[manager] admins lists {admin} twice"),
            "[manager] admins: the zero address signs nothing; name a wallet",
            "[manager] session_secs 0 is not between 1 and 86400 (a day)",
        ]
    );
    let p = f.problems(&f.text_with(&[("manager", &format!("admins = [\"{admin}\"]"))]));
    assert_eq!(
        p,
        [
            "[manager] admins are given but there is no [api] section: the manager is served on the API's listener"
        ]
    );
}

#[test]
fn allow_to_broker_entries_are_checked_each_with_the_accepted_forms() {
    let f = Fixture::new();
    let c = f.load(&f.text()).unwrap();
    assert_eq!(c.wireguard.allow_to_broker, [], "nothing by default");
    let problems = f.problems(&f.text_with(&[(
        "wireguard",
        "allow_to_broker = [\"tcp/22\", \"ssh\", \"udp/0\", \"icmp/1\"]",
    )]));
    assert_eq!(problems.len(), 3, "{problems:?}");
    for (entry, why) in [
        ("ssh", "is not protocol/port"),
        ("udp/0", "not 1 to 65535"),
        ("icmp/1", "other than tcp or udp"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains("[wireguard] allow_to_broker")
                    && p.contains(entry)
                    && p.contains(why)
                    && p.contains("e.g. \"tcp/8080\"")),
            "{entry}: {problems:?}"
        );
    }
    let problems = f.problems(&f.text_with(&[("wireguard", "interface = \"wg\\\"x\"")]));
    assert!(
        problems.iter().any(|p| p.contains("nftables rule")),
        "{problems:?}"
    );
}

#[test]
fn ndp_vlan_is_a_vlan_id() {
    let f = Fixture::new();
    assert_eq!(f.load(&f.text()).unwrap().broker.ndp_vlan, None);
    for id in [1, 4094] {
        let c = f.load(&f.text_with(&[("broker", &format!("ndp_vlan = {id}"))]));
        assert_eq!(c.unwrap().broker.ndp_vlan, Some(id));
    }
    for id in [0, 4095] {
        let p = f.problems(&f.text_with(&[("broker", &format!("ndp_vlan = {id}"))]));
        assert_eq!(
            p,
            [format!(
                "[broker] ndp_vlan {id} is not a VLAN id (1 to 4094); leave it out for no VLAN filter"
            )]
        );
    }
}

/// `confirm` takes the two tags and a number of blocks (also written as a
/// string), the older `confirmations` still reads as blocks, and anything
/// else is one clear problem; both keys at once are refused.
#[test]
fn confirm_is_a_tag_or_a_number_of_blocks() {
    let f = Fixture::new();
    let confirm = |line: &str| f.load(&f.text_with(&[("onchain", line)]));
    for (line, want) in [
        ("confirm = \"safe\"", Confirm::Safe),
        ("confirm = \"finalized\"", Confirm::Finalized),
        ("confirm = 0", Confirm::Blocks(0)),
        ("confirm = 12", Confirm::Blocks(12)),
        ("confirm = \"6\"", Confirm::Blocks(6)),
        ("confirmations = 3", Confirm::Blocks(3)),
    ] {
        let c = confirm(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(c.onchain.confirm, want, "{line}");
        // Written back as `confirm`, whatever the spelling read.
        let written = toml::to_string(&c).unwrap();
        assert!(!written.contains("confirmations"), "{written}");
        assert_eq!(f.load(&written).unwrap(), c, "{written}");
    }
    let expected = "is not \"safe\", \"finalized\" or a number of blocks (0 or more)";
    for (line, shown) in [
        ("confirm = \"latest\"", "latest"),
        ("confirm = \"Safe\"", "Safe"),
        ("confirm = -1", "-1"),
        ("confirm = \"\"", ""),
    ] {
        let problems = f.problems(&f.text_with(&[("onchain", line)]));
        assert_eq!(
            problems,
            [format!("[onchain] confirm \"{shown}\" {expected}")],
            "{line}"
        );
    }
    let problems = f.problems(&f.text_with(&[("onchain", "confirm = 2\nconfirmations = 2")]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("both given"), "{problems:?}");
    // A float or a table is neither form: serde's own message, still one
    // problem naming the key.
    let problems = f.problems(&f.text_with(&[("onchain", "confirm = 1.5")]));
    assert_eq!(problems.len(), 1, "{problems:?}");
}
