//! The HTTP API (`[api]`) against the real daemon in the lab of
//! tests/support/lab.rs: its answers agree with the CLI's, a DELETE really
//! releases (peer, route, NDP entry, database, once on chain), and the
//! configurations it must refuse are refused at start-up. Needs root.

mod support;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::lab::{Lab, lab_test, lab_test_with};
use wireguard_control::Key;

/// Where the lab's daemon serves the API (the default listen).
const BASE: &str = "http://127.0.0.1:8080";

/// A request's status and body (JSON; a string when not JSON; Null when
/// empty), with `token`.
async fn request(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status();
    let json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else if json {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
    } else {
        Value::String(text)
    };
    (status, body)
}

/// [`request`] to the lab's API.
async fn call_with(method: Method, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    request(
        &reqwest::Client::new(),
        method,
        &format!("{BASE}{path}"),
        token,
    )
    .await
}

thread_local! {
    /// The token `call` and `get` present.
    static TOKEN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

async fn call(method: Method, path: &str) -> (StatusCode, Value) {
    let token = TOKEN.with_borrow(Clone::clone);
    call_with(method, path, token.as_deref()).await
}

async fn get(path: &str) -> (StatusCode, Value) {
    call(Method::GET, path).await
}

/// `blockhost-broker token create --name NAME [--read-only]`: the secret.
fn create_token(lab: &Lab, name: &str, read_only: bool) -> String {
    let mut args = vec!["token", "create", "--name", name];
    if read_only {
        args.push("--read-only");
    }
    let run = lab.cli(&args);
    let secret = run.ok().trim().to_string();
    assert!(secret.starts_with("bhb_") && secret.len() == 68, "{secret}");
    secret
}

/// `{"error": …}` with `status`, its message containing `needle`.
fn is_error((status, body): (StatusCode, Value), expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// `GET /metrics` (with `token`): its text, after a 200.
async fn metrics_text(token: Option<&str>) -> String {
    match call_with(Method::GET, "/metrics", token).await {
        (StatusCode::OK, Value::String(text)) => text,
        other => panic!("/metrics: {other:?}"),
    }
}

/// `promtool check metrics` passes `text` (Debian package `prometheus`).
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `prefix` as one path segment.
fn encoded(prefix: &str) -> String {
    prefix.replace('/', "%2F")
}

/// Two requests answered.
async fn two_allocations(lab: &mut Lab) -> Vec<Key> {
    lab.start_daemon(None);
    let keys: Vec<Key> = (0..2).map(|_| Key::generate_private()).collect();
    for key in &keys {
        lab.request(key).await;
    }
    lab.wait_answered(2).await;
    keys
}

#[test]
fn the_api_shows_the_daemons_figures_and_releases_for_real() {
    lab_test_with("api", "[api]\n", async |lab: &mut Lab| {
        // Made in the database (no daemon yet), used with the daemon.
        let early = create_token(lab, "early", false);
        let keys = two_allocations(lab).await;
        TOKEN.set(Some(early));

        let (status, health) = get("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(health["status"], "ok");
        assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

        let (status, s) = get("/v1/status").await;
        assert_eq!(status, StatusCode::OK, "{s}");
        assert_eq!(s["upstream_prefix"], support::lab::UPSTREAM);
        assert_eq!(s["allocation_size"], support::lab::ALLOCATION_SIZE);
        assert_eq!(s["used_allocations"], 2);
        let total = (1u64 << 56) - 1;
        assert_eq!(s["total_allocations"], total);
        assert_eq!(s["available_allocations"], total - 2);
        assert_eq!(
            (s["active_peers"].as_u64(), s["idle_peers"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(s["never_connected_peers"], 2);
        assert_eq!(s["daemon"], true);

        // The allocations: those the CLI lists, under the tools' names.
        let (status, all) = get("/v1/allocations").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        let listed = all.as_array().unwrap();
        let cli = lab.list(None);
        let prefixes = |v: &[Value]| -> BTreeSet<String> {
            v.iter()
                .map(|a| a["prefix"].as_str().unwrap().to_string())
                .collect()
        };
        let cli_prefixes: BTreeSet<String> = cli.iter().map(|v| v.prefix.to_string()).collect();
        assert_eq!(prefixes(listed), cli_prefixes);
        let pubkeys: BTreeSet<&str> = listed
            .iter()
            .map(|a| a["pubkey"].as_str().unwrap())
            .collect();
        let ours: BTreeSet<String> = keys.iter().map(|k| k.get_public().to_base64()).collect();
        assert_eq!(pubkeys, ours.iter().map(String::as_str).collect());
        for a in listed {
            assert_eq!(a["status"], "never_connected", "{a}");
            assert!(
                a["last_seen_at"].is_null() && a["allocated_at"].is_u64(),
                "{a}"
            );
            assert!(
                a["nft_contract"].is_string() && a.get("endpoint").is_some(),
                "{a}"
            );
        }

        // One, by its prefix in both spellings; the prefixes refused.
        let gone = &cli[0];
        let prefix = gone.prefix.to_string();
        let (status, one) = get(&format!("/v1/allocations/{}", encoded(&prefix))).await;
        assert_eq!(status, StatusCode::OK, "{one}");
        assert_eq!(one["prefix"], prefix);
        assert_eq!(
            one["nft_contract"],
            serde_json::to_value(gone.nft_contract).unwrap()
        );
        let (status, split) = get(&format!("/v1/allocations/{prefix}")).await;
        assert_eq!((status, &split), (StatusCode::OK, &one));
        let bad = StatusCode::BAD_REQUEST;
        is_error(
            get("/v1/allocations/nonsense").await,
            bad,
            "not an IPv6 prefix",
        );
        is_error(
            get(&format!(
                "/v1/allocations/{}",
                encoded("2001:db8:100::101/120")
            ))
            .await,
            bad,
            "host bits set",
        );
        is_error(
            get("/v1/allocations/2001:db8:200::/120").await,
            bad,
            "not in the pool",
        );
        let free = "2001:db8:100::ff00/120";
        is_error(
            get(&format!("/v1/allocations/{}", encoded(free))).await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            call(
                Method::DELETE,
                &format!("/v1/allocations/{}", encoded(free)),
            )
            .await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            get("/v2/nothing").await,
            StatusCode::NOT_FOUND,
            "no such endpoint",
        );

        // DELETE: peer, route, NDP entry, database, once on chain.
        let (status, body) = call(
            Method::DELETE,
            &format!("/v1/allocations/{}", encoded(&prefix)),
        )
        .await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        assert_eq!(lab.released_on_chain(gone.nft_contract).await, 1);
        let (peers, routes, ndp) = lab.kernel();
        assert_eq!(peers.len(), 1);
        assert!(!peers.iter().any(|(_, p)| *p == prefix));
        assert!(!routes.contains(&prefix));
        assert!(!ndp.contains(&gone.prefix));
        assert_eq!(lab.list(None).len(), 1);
        assert_eq!(lab.status().pool.used, 1);
        is_error(
            get(&format!("/v1/allocations/{prefix}")).await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            call(Method::DELETE, &format!("/v1/allocations/{prefix}")).await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        assert_eq!(lab.released_on_chain(gone.nft_contract).await, 1);

        // Metrics: open on loopback, valid for promtool, the figures above.
        let metrics = metrics_text(None).await;
        promtool_accepts(&metrics);
        for line in [
            "blockhost_broker_allocations{state=\"used\"} 1",
            "blockhost_broker_responses_total 2",
            "blockhost_broker_wireguard_peers{state=\"never_connected\"} 1",
            "blockhost_broker_chain_errors_total{kind=\"transient\"} 0",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{line} not in\n{metrics}"
            );
        }
        for family in [
            "build_info{version=",
            "requests_total{contract=",
            "last_poll_success_timestamp_seconds ",
            "chain_lag_blocks ",
            "operator_balance_wei ",
            "gas_spent_wei_total ",
            "ndp_solicitations_total{result=\"answered\"} ",
        ] {
            let sample = format!("blockhost_broker_{family}");
            assert!(
                metrics.lines().any(|l| l.starts_with(&sample)),
                "{sample} not in\n{metrics}"
            );
        }
        // Two answers and one release were mined.
        let gas = metrics
            .lines()
            .find_map(|l| l.strip_prefix("blockhost_broker_gas_spent_wei_total "))
            .unwrap();
        assert!(gas.parse::<u128>().unwrap() > 0, "{gas}");

        // Bodies and rates are bounded.
        let big = reqwest::Client::new()
            .delete(format!("{BASE}/v1/allocations/{}", encoded(&prefix)))
            .body(vec![b'x'; 20 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let burst = futures::future::join_all((0..120).map(|_| get("/health"))).await;
        let limited: Vec<_> = burst
            .iter()
            .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
            .collect();
        assert!(!limited.is_empty(), "120 requests at once, none limited");
        assert!(limited[0].1["error"].is_string(), "{}", limited[0].1);

        // SIGTERM stops the API with the daemon.
        lab.daemon().stop();
        assert!(reqwest::get(format!("{BASE}/health")).await.is_err());
    });
}

#[test]
fn tokens_decide_who_reads_and_who_releases_and_revoked_ones_stop_at_once() {
    lab_test_with("apt", "[api]\n", async |lab: &mut Lab| {
        lab.start_daemon(None);
        lab.request(&Key::generate_private()).await;
        lab.wait_answered(1).await;
        let prefix = lab.list(None)[0].prefix.to_string();
        let one = format!("/v1/allocations/{}", encoded(&prefix));
        let unauthorized = StatusCode::UNAUTHORIZED;

        // Nothing under /v1 without a valid token; /health is open.
        assert_eq!(
            call_with(Method::GET, "/health", None).await.0,
            StatusCode::OK
        );
        for (method, path) in [
            (Method::GET, "/v1/status"),
            (Method::GET, "/v1/allocations"),
            (Method::GET, one.as_str()),
            (Method::DELETE, one.as_str()),
        ] {
            let made_up = format!("bhb_{}", "0".repeat(64));
            for token in [None, Some(made_up.as_str()), Some("")] {
                is_error(
                    call_with(method.clone(), path, token).await,
                    unauthorized,
                    "a valid token is needed",
                );
            }
        }

        // Made through the daemon while it runs.
        let ops = create_token(lab, "ops", false);
        let viewer = create_token(lab, "viewer", true);
        lab.cli(&["token", "create", "--name", "ops"])
            .fails_with("a token named \"ops\" exists");
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"]).json();
        let names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["ops", "viewer"]);
        assert_eq!(
            (
                listed[0]["read_only"].as_bool(),
                listed[1]["read_only"].as_bool()
            ),
            (Some(false), Some(true))
        );
        let text = lab.cli(&["token", "list"]);
        assert!(!text.ok().contains(&ops) && !text.ok().contains(&viewer));

        // Read-only: reads, never releases.
        let (status, body) = call_with(Method::GET, "/v1/status", Some(&viewer)).await;
        assert_eq!(
            (status, body["used_allocations"].as_u64()),
            (StatusCode::OK, Some(1))
        );
        assert_eq!(
            call_with(Method::GET, &one, Some(&viewer)).await.0,
            StatusCode::OK
        );
        is_error(
            call_with(Method::DELETE, &one, Some(&viewer)).await,
            StatusCode::FORBIDDEN,
            "read-only",
        );
        assert_eq!(lab.list(None).len(), 1);

        // Revoked: refused from the next request on.
        lab.cli(&["token", "revoke", "viewer"]).ok();
        is_error(
            call_with(Method::GET, "/v1/status", Some(&viewer)).await,
            unauthorized,
            "a valid token",
        );
        lab.cli(&["token", "revoke", "viewer"])
            .fails_with("no token is named \"viewer\"");
        let (status, _) = call_with(Method::DELETE, &one, Some(&ops)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(lab.list(None).len(), 0);

        // Without the daemon, in the database.
        lab.daemon().stop();
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"]).json();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["name"], "ops");
        lab.cli(&["token", "revoke", "ops"]).ok();
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"]).json();
        assert_eq!(listed, Vec::<Value>::new());
    });
}

#[test]
fn off_loopback_the_api_speaks_tls() {
    let certs = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["192.0.2.1".to_string()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "[api]\nlisten = \"192.0.2.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    lab_test_with("aps", &extra, async |lab: &mut Lab| {
        lab.start_daemon(None);
        let token = create_token(lab, "ops", true);
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        let tls = async |path: &str, token: Option<&str>| {
            let url = format!("https://192.0.2.1:8443{path}");
            request(&client, Method::GET, &url, token).await
        };
        let (status, body) = tls("/v1/status", Some(&token)).await;
        assert_eq!(
            (status, &body["used_allocations"]),
            (StatusCode::OK, &0.into())
        );
        assert_eq!(tls("/v1/status", None).await.0, StatusCode::UNAUTHORIZED);
        // Off loopback, the metrics need a token too.
        assert_eq!(tls("/metrics", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(tls("/metrics", Some(&token)).await.0, StatusCode::OK);
        // No plain HTTP on that port.
        let plain = reqwest::get("http://192.0.2.1:8443/health").await;
        assert!(plain.is_err() || !plain.unwrap().status().is_success());
    });
}

/// Every path and method of api/openapi.yaml, asked the way that gives each
/// of its documented status codes, answers with that code (4xx with an
/// `{"error"}` body); every operation that needs a token documents 401.
#[test]
fn the_server_answers_as_its_openapi_file_says() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    lab_test_with("apd", "[api]\n", async |lab: &mut Lab| {
        two_allocations(lab).await;
        let ops = create_token(lab, "ops", false);
        let viewer = create_token(lab, "viewer", true);
        let taken: Vec<String> = lab
            .list(None)
            .iter()
            .map(|v| v.prefix.to_string())
            .collect();
        let free = "2001:db8:100::ff00/120".to_string();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 6, "{paths:?}");
        let mut checked = 0;
        // Reads first: a DELETE's 204 ends its allocation.
        for wanted in [Method::GET, Method::DELETE] {
            for (i, (template, item)) in paths.iter().enumerate() {
                let method = wanted.as_str().to_lowercase();
                let Some(op) = item.get(&method) else {
                    continue;
                };
                let open = op
                    .get("security")
                    .is_some_and(|s| s == &serde_json::json!([]));
                let codes = op["responses"].as_object().unwrap();
                assert!(
                    open || codes.contains_key("401"),
                    "{method} {template}: no 401"
                );
                // Each template its own allocation.
                let mine = &taken[i % taken.len()];
                for code in codes.keys() {
                    let code: u16 = code.parse().unwrap();
                    let prefix = match code {
                        400 => "nonsense/7",
                        404 => &free,
                        _ => mine,
                    };
                    let (addr, len) = prefix.split_once('/').unwrap();
                    let path = template
                        .replace("{prefix}", &encoded(prefix))
                        .replace("{addr}", addr)
                        .replace("{len}", len);
                    let token = match code {
                        401 => None,
                        403 => Some(viewer.as_str()),
                        _ => Some(ops.as_str()),
                    };
                    let (status, body) = call_with(wanted.clone(), &path, token).await;
                    assert_eq!(status.as_u16(), code, "{method} {path}: {body}");
                    if code >= 400 {
                        assert!(body["error"].is_string(), "{method} {path}: {body}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "{checked} answers checked");
        assert_eq!(lab.list(None), []);
    });
}

#[test]
fn plain_http_off_loopback_is_refused_at_start_up() {
    lab_test_with(
        "apn",
        "[api]\nlisten = \"0.0.0.0:8080\"\n",
        async |lab: &mut Lab| {
            let expected = "is not a loopback address: serving it needs TLS";
            lab.cli(&["check-config"]).fails_with(expected);
            lab.cli(&["run"]).fails_with(expected);
            // A certificate that cannot be read stops `run` before it sets anything up.
            let text = std::fs::read_to_string(&lab.config).unwrap().replace(
            "listen = \"0.0.0.0:8080\"",
            "listen = \"0.0.0.0:8443\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"",
        );
            std::fs::write(&lab.config, text).unwrap();
            lab.cli(&["check-config"]).ok();
            lab.cli(&["run"])
                .fails_with("HTTP API: TLS certificate /nonexistent/c.pem");
            // No NDP responder was pinned.
            let pinned = std::fs::read_dir(lab.pins.dir.path()).map_or(0, |d| d.count());
            assert_eq!(pinned, 0);
        },
    );
}

#[test]
fn without_an_api_section_nothing_listens() {
    lab_test("apo", async |lab: &mut Lab| {
        lab.start_daemon(None);
        assert!(reqwest::get(format!("{BASE}/health")).await.is_err());
    });
}
