//! The HTTP API (`[api]`) against the real daemon in broker-lab's lab: its
//! answers agree with the CLI's, a DELETE really releases (peer, route, NDP
//! entry, database, once on chain), and the configurations it must refuse
//! are refused at start-up. The API's client runs in the broker's
//! namespace, where the API listens. Needs root.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use broker_lab::{Lab, lab_test, requests::Client, topology::BROKER_V4};
use broker_userspace::{
    config::{self, DEFAULT_API_LISTEN},
    ipam::Pool,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the lab's daemon serves the API (the default listen).
const BASE: &str = "http://127.0.0.1:8080";
/// The broker's pool: a /64 in /120s.
const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;
/// The broker's address in the pool: the clients' gateway.
const GATEWAY: &str = "2001:db8:100::2";

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

/// The API's client: a runtime whose thread is in the broker's namespace
/// (the API listens on its loopback), the token `call` and `get` present.
struct Api {
    runtime: Option<tokio::runtime::Runtime>,
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(lab: &Lab, base: &str, client: reqwest::Client) -> anyhow::Result<Api> {
        Ok(Api {
            runtime: Some(lab.net.broker.runtime()?),
            client,
            base: base.to_string(),
            token: None,
        })
    }

    /// Runs `f` in the broker's namespace; its panics are the caller's.
    async fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let runtime = self.runtime.as_ref().expect("the runtime until drop");
        runtime
            .spawn(f)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// [`request`] to the lab's API.
    async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let client = self.client.clone();
        let url = format!("{}{path}", self.base);
        let token = token.map(str::to_string);
        self.run(async move { request(&client, method, &url, token.as_deref()).await })
            .await
    }

    async fn call(&self, method: Method, path: &str) -> (StatusCode, Value) {
        self.call_with(method, path, self.token.as_deref()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path).await
    }

    /// Whether anything answers plain HTTP at `url` (in the namespace).
    async fn plain_get(&self, url: String) -> reqwest::Result<reqwest::Response> {
        self.run(reqwest::get(url)).await
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        // Dropped inside the lab's runtime, where a blocking shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `[api]` with `listen` and, when given, a certificate and key.
fn api_section(listen: &str, tls: Option<(PathBuf, PathBuf)>) -> anyhow::Result<config::Api> {
    let (tls_cert, tls_key) = tls.unzip();
    Ok(config::Api {
        listen: listen.parse()?,
        tls_cert,
        tls_key,
        insecure_plaintext: false,
    })
}

/// A lab whose broker hands out UPSTREAM in /ALLOCATION_SIZE, with `api`
/// as its `[api]` (not started); `body` gets the API's client at `base`.
fn api_test(
    tag: &str,
    api: Option<config::Api>,
    (base, client): (&str, reqwest::Client),
    body: impl AsyncFnOnce(&mut Lab, &mut Api) -> anyhow::Result<()> + Send,
) {
    lab_test(tag, async |lab: &mut Lab| {
        lab.config.broker.pool = Pool::new(UPSTREAM.parse()?, ALLOCATION_SIZE)?;
        lab.config.api = api;
        let mut client = Api::new(lab, base, client)?;
        body(lab, &mut client).await
    });
}

/// [`api_test`] with `[api]` at its defaults, the client on BASE.
fn default_api_test(
    tag: &str,
    body: impl AsyncFnOnce(&mut Lab, &mut Api) -> anyhow::Result<()> + Send,
) {
    let section = api_section(DEFAULT_API_LISTEN, None).expect("the default listen");
    api_test(tag, Some(section), (BASE, reqwest::Client::new()), body);
}

/// `blockhost-broker token create --name NAME [--read-only]`: the secret.
fn create_token(lab: &Lab, name: &str, read_only: bool) -> anyhow::Result<String> {
    let mut args = vec!["token", "create", "--name", name];
    if read_only {
        args.push("--read-only");
    }
    let run = lab.cli(&args)?;
    let secret = run.ok()?.trim().to_string();
    assert!(secret.starts_with("bhb_") && secret.len() == 68, "{secret}");
    Ok(secret)
}

/// `{"error": …}` with `status`, its message containing `needle`.
fn is_error((status, body): (StatusCode, Value), expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// `prefix` as one path segment.
fn encoded(prefix: &str) -> String {
    prefix.replace('/', "%2F")
}

/// Two requests answered: their servers and request ids.
async fn two_allocations(lab: &mut Lab) -> anyhow::Result<Vec<(Client, u64)>> {
    lab.start_broker_serving(None)?;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (client, _, id) = lab.request_from_new_server().await?;
        servers.push((client, id));
    }
    lab.wait_answered(2).await?;
    Ok(servers)
}

#[test]
fn the_api_shows_the_daemons_figures_and_releases_for_real() {
    default_api_test("api", async |lab: &mut Lab, api: &mut Api| {
        // Made in the database (no daemon yet), used with the daemon.
        lab.write_config()?;
        let early = create_token(lab, "early", false)?;
        let servers = two_allocations(lab).await?;
        let keys: Vec<String> = servers.iter().map(|(c, _)| c.wg_public()).collect();
        api.token = Some(early);

        let (status, health) = api.get("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(health["status"], "ok");
        assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

        let (status, s) = api.get("/v1/status").await;
        assert_eq!(status, StatusCode::OK, "{s}");
        assert_eq!(s["upstream_prefix"], UPSTREAM);
        assert_eq!(s["allocation_size"], ALLOCATION_SIZE);
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
        let (status, all) = api.get("/v1/allocations").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        let listed = all.as_array().unwrap();
        let cli = lab.list_allocations(None)?;
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
        let ours: BTreeSet<String> = keys.into_iter().collect();
        assert_eq!(pubkeys, ours.iter().map(String::as_str).collect());
        for a in listed {
            assert_eq!(a["status"], "never_connected", "{a}");
            assert!(
                a["last_seen_at"].is_null() && a["allocated_at"].is_u64(),
                "{a}"
            );
            // No client sent anything yet.
            assert!(
                a["nft_contract"].is_string() && a["endpoint"].is_null(),
                "{a}"
            );
        }

        // One, by its prefix in both spellings; the prefixes refused.
        let gone = &cli[0];
        let prefix = gone.prefix.to_string();
        let (status, one) = api
            .get(&format!("/v1/allocations/{}", encoded(&prefix)))
            .await;
        assert_eq!(status, StatusCode::OK, "{one}");
        assert_eq!(one["prefix"], prefix);
        assert_eq!(
            one["nft_contract"],
            serde_json::to_value(gone.nft_contract).unwrap()
        );
        let (status, split) = api.get(&format!("/v1/allocations/{prefix}")).await;
        assert_eq!((status, &split), (StatusCode::OK, &one));

        // Its server brings its tunnel up: the endpoint is where the
        // server's packets come from, once the daemon saw the handshake.
        let (client, id) = servers
            .iter()
            .find(|(c, _)| c.wg_public() == gone.wireguard_key)
            .unwrap();
        let answer = lab.wait_answer(*id, client, Duration::from_secs(5)).await?;
        lab.bring_up_tunnel(client, &answer)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let one = loop {
            let (status, one) = api.get(&format!("/v1/allocations/{prefix}")).await;
            assert_eq!(status, StatusCode::OK, "{one}");
            if one["status"] == "active" {
                break one;
            }
            assert!(Instant::now() < deadline, "no handshake seen: {one}");
            lab.net.servers[0].ping(GATEWAY, 1);
        };
        let endpoint = lab.server_endpoint(1)?.to_string();
        assert_eq!(one["endpoint"], endpoint.as_str(), "{one}");
        assert!(one["last_seen_at"].is_u64(), "{one}");
        let (_, all) = api.get("/v1/allocations").await;
        let listed = all.as_array().unwrap();
        assert!(listed.contains(&one), "{all}");
        let other = listed
            .iter()
            .find(|a| a["prefix"] != prefix.as_str())
            .unwrap();
        assert!(other["endpoint"].is_null(), "{other}");
        let bad = StatusCode::BAD_REQUEST;
        is_error(
            api.get("/v1/allocations/nonsense").await,
            bad,
            "not an IPv6 prefix",
        );
        is_error(
            api.get(&format!(
                "/v1/allocations/{}",
                encoded("2001:db8:100::101/120")
            ))
            .await,
            bad,
            "host bits set",
        );
        is_error(
            api.get("/v1/allocations/2001:db8:200::/120").await,
            bad,
            "not in the pool",
        );
        let free = "2001:db8:100::ff00/120";
        is_error(
            api.get(&format!("/v1/allocations/{}", encoded(free))).await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            api.call(
                Method::DELETE,
                &format!("/v1/allocations/{}", encoded(free)),
            )
            .await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            api.get("/v2/nothing").await,
            StatusCode::NOT_FOUND,
            "no such endpoint",
        );

        // DELETE: peer, route, NDP entry, database, once on chain.
        let (status, body) = api
            .call(
                Method::DELETE,
                &format!("/v1/allocations/{}", encoded(&prefix)),
            )
            .await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        assert_eq!(lab.released_on_chain(gone.nft_contract).await?, 1);
        let (peers, routes, ndp) = lab.kernel_state()?;
        assert_eq!(peers.len(), 1);
        assert!(!peers.iter().any(|(_, p)| *p == prefix));
        assert!(!routes.contains(&gone.prefix));
        assert!(!ndp.contains(&gone.prefix));
        assert_eq!(lab.list_allocations(None)?.len(), 1);
        assert_eq!(lab.operator_status()?.pool.used, 1);
        is_error(
            api.get(&format!("/v1/allocations/{prefix}")).await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        is_error(
            api.call(Method::DELETE, &format!("/v1/allocations/{prefix}"))
                .await,
            StatusCode::NOT_FOUND,
            "no allocation has",
        );
        assert_eq!(lab.released_on_chain(gone.nft_contract).await?, 1);

        // Metrics: open on loopback, valid for promtool, the figures above.
        let metrics = lab.metrics().await?;
        let m = |name: &str, labels: &[(&str, &str)]| metrics.broker(name, labels).unwrap();
        assert_eq!(m("allocations", &[("state", "used")]), 1);
        assert_eq!(m("responses_total", &[]), 2);
        assert_eq!(m("wireguard_peers", &[("state", "never_connected")]), 1);
        assert_eq!(m("chain_errors_total", &[("kind", "transient")]), 0);
        let requests = lab.chain.requests.to_string();
        let answered = [("contract", requests.as_str()), ("outcome", "answered")];
        assert_eq!(m("requests_total", &answered), 2);
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(m("build_info", &version), 1);
        assert!(m("last_poll_success_timestamp_seconds", &[]) > 0);
        m("chain_lag_blocks", &[]);
        assert!(m("operator_balance_wei", &[]) > 0);
        m("ndp_solicitations_total", &[("result", "answered")]);
        // Two answers and one release were mined.
        assert!(m("gas_spent_wei_total", &[]) > 0);

        // Bodies and rates are bounded.
        let big = reqwest::Client::new()
            .delete(format!("{BASE}/v1/allocations/{}", encoded(&prefix)))
            .body(vec![b'x'; 20 * 1024])
            .send();
        let big = api.run(big).await.unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let burst = futures::future::join_all((0..120).map(|_| api.get("/health"))).await;
        let limited: Vec<_> = burst
            .iter()
            .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
            .collect();
        assert!(!limited.is_empty(), "120 requests at once, none limited");
        assert!(limited[0].1["error"].is_string(), "{}", limited[0].1);

        // SIGTERM stops the API with the daemon.
        lab.stop_broker()?;
        assert!(api.plain_get(format!("{BASE}/health")).await.is_err());
        Ok(())
    });
}

#[test]
fn tokens_decide_who_reads_and_who_releases_and_revoked_ones_stop_at_once() {
    default_api_test("apt", async |lab: &mut Lab, api: &mut Api| {
        lab.start_broker_serving(None)?;
        lab.request_from_new_server().await?;
        lab.wait_answered(1).await?;
        let prefix = lab.list_allocations(None)?[0].prefix.to_string();
        let one = format!("/v1/allocations/{}", encoded(&prefix));
        let unauthorized = StatusCode::UNAUTHORIZED;

        // Nothing under /v1 without a valid token; /health is open.
        assert_eq!(
            api.call_with(Method::GET, "/health", None).await.0,
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
                    api.call_with(method.clone(), path, token).await,
                    unauthorized,
                    "a valid token is needed",
                );
            }
        }

        // Made through the daemon while it runs.
        let ops = create_token(lab, "ops", false)?;
        let viewer = create_token(lab, "viewer", true)?;
        lab.cli(&["token", "create", "--name", "ops"])?
            .fails_with("a token named \"ops\" exists")?;
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"])?.json()?;
        let names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["ops", "viewer"]);
        assert_eq!(
            (
                listed[0]["read_only"].as_bool(),
                listed[1]["read_only"].as_bool()
            ),
            (Some(false), Some(true))
        );
        let text = lab.cli(&["token", "list"])?;
        assert!(!text.ok()?.contains(&ops) && !text.ok()?.contains(&viewer));

        // Read-only: reads, never releases.
        let (status, body) = api
            .call_with(Method::GET, "/v1/status", Some(&viewer))
            .await;
        assert_eq!(
            (status, body["used_allocations"].as_u64()),
            (StatusCode::OK, Some(1))
        );
        assert_eq!(
            api.call_with(Method::GET, &one, Some(&viewer)).await.0,
            StatusCode::OK
        );
        is_error(
            api.call_with(Method::DELETE, &one, Some(&viewer)).await,
            StatusCode::FORBIDDEN,
            "read-only",
        );
        assert_eq!(lab.list_allocations(None)?.len(), 1);

        // Revoked: refused from the next request on.
        lab.cli(&["token", "revoke", "viewer"])?.ok()?;
        is_error(
            api.call_with(Method::GET, "/v1/status", Some(&viewer))
                .await,
            unauthorized,
            "a valid token",
        );
        lab.cli(&["token", "revoke", "viewer"])?
            .fails_with("no token is named \"viewer\"")?;
        let (status, _) = api.call_with(Method::DELETE, &one, Some(&ops)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(lab.list_allocations(None)?.len(), 0);

        // Without the daemon, in the database.
        lab.stop_broker()?;
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"])?.json()?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["name"], "ops");
        lab.cli(&["token", "revoke", "ops"])?.ok()?;
        let listed: Vec<Value> = lab.cli(&["token", "list", "--json"])?.json()?;
        assert_eq!(listed, Vec::<Value>::new());
        Ok(())
    });
}

#[test]
fn off_loopback_the_api_speaks_tls() {
    let certs = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![BROKER_V4.to_string()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    let listen = format!("{BROKER_V4}:8443");
    let section = api_section(&listen, Some((cert_file, key_file))).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://{listen}");
    api_test(
        "aps",
        Some(section),
        (&base, client),
        async |lab: &mut Lab, api: &mut Api| {
            lab.start_broker_serving(None)?;
            let token = create_token(lab, "ops", true)?;
            let tls = async |path: &str, token: Option<&str>| {
                api.call_with(Method::GET, path, token).await
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
            let plain = api.plain_get(format!("http://{listen}/health")).await;
            assert!(plain.is_err() || !plain.unwrap().status().is_success());
            Ok(())
        },
    );
}

/// Every path and method of api/openapi.yaml, asked the way that gives each
/// of its documented status codes, answers with that code (4xx with an
/// `{"error"}` body); every operation that needs a token documents 401.
#[test]
fn the_server_answers_as_its_openapi_file_says() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    default_api_test("apd", async |lab: &mut Lab, api: &mut Api| {
        two_allocations(lab).await?;
        let ops = create_token(lab, "ops", false)?;
        let viewer = create_token(lab, "viewer", true)?;
        let taken: Vec<String> = lab
            .list_allocations(None)?
            .iter()
            .map(|v| v.prefix.to_string())
            .collect();
        let free = "2001:db8:100::ff00/120".to_string();
        // An allocation has the documented fields, all required, no others.
        let schema = &doc["components"]["schemas"]["Allocation"];
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(required, documented);
        let (_, listed) = api
            .call_with(Method::GET, "/v1/allocations", Some(&ops))
            .await;
        assert_eq!(listed.as_array().unwrap().len(), taken.len(), "{listed}");
        for a in listed.as_array().unwrap() {
            let fields: BTreeSet<&str> =
                a.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(fields, documented, "{a}");
        }
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
                    let (status, body) = api.call_with(wanted.clone(), &path, token).await;
                    assert_eq!(status.as_u16(), code, "{method} {path}: {body}");
                    if code >= 400 {
                        assert!(body["error"].is_string(), "{method} {path}: {body}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "{checked} answers checked");
        assert_eq!(lab.list_allocations(None)?, []);
        Ok(())
    });
}

#[test]
fn plain_http_off_loopback_is_refused_at_start_up() {
    let section = api_section("0.0.0.0:8080", None).unwrap();
    let client = (BASE, reqwest::Client::new());
    api_test(
        "apn",
        Some(section),
        client,
        async |lab: &mut Lab, _: &mut Api| {
            lab.write_config()?;
            let expected = "is not a loopback address: serving it needs TLS";
            lab.cli(&["check-config"])?.fails_with(expected)?;
            lab.cli(&["run"])?.fails_with(expected)?;
            // A certificate that cannot be read stops `run` before it sets anything up.
            let unreadable = (
                PathBuf::from("/nonexistent/c.pem"),
                PathBuf::from("/nonexistent/k.pem"),
            );
            lab.config.api = Some(api_section("0.0.0.0:8443", Some(unreadable))?);
            lab.write_config()?;
            lab.cli(&["check-config"])?.ok()?;
            lab.cli(&["run"])?
                .fails_with("HTTP API: TLS certificate /nonexistent/c.pem")?;
            // No NDP responder was pinned.
            let pinned = std::fs::read_dir(lab.pin_dir()).map_or(0, |d| d.count());
            assert_eq!(pinned, 0);
            Ok(())
        },
    );
}

#[test]
fn without_an_api_section_nothing_listens() {
    let client = (BASE, reqwest::Client::new());
    api_test("apo", None, client, async |lab: &mut Lab, api: &mut Api| {
        lab.start_broker_serving(None)?;
        assert!(api.plain_get(format!("{BASE}/health")).await.is_err());
        Ok(())
    });
}
