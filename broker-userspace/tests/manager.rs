//! The web manager's server side against the real daemon in broker-lab's
//! lab: Sign-In with Ethereum signed with anvil's keys (alloy), each
//! refusal on its own (unlisted wallet, another domain, another chain,
//! expired, no login cookie, replayed), the session and its CSRF token, the
//! release through the daemon's own path, logout, and the login rate
//! limit. Requests run in the broker's namespace, where the API listens on
//! loopback. Needs root.

use alloy::{
    primitives::Address,
    signers::{SignerSync as _, local::PrivateKeySigner},
};
use broker_lab::{Lab, lab_test, topology::BROKER_V4};
use broker_userspace::{
    config,
    ipam::Pool,
    manager::{CSRF_HEADER, LOGIN_BURST},
};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

/// Where the lab's daemon serves the API (the default listen).
const BASE: &str = "http://127.0.0.1:8080";
/// anvil's dev accounts 5 and 6 (well-known test keys, no funds of value).
const ADMIN_KEY: &str = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
const STRANGER_KEY: &str = "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e";

/// An answer: status, body (JSON or text), the cookies set (`name=value`)
/// and their whole `Set-Cookie` lines.
struct Answer {
    status: StatusCode,
    body: Value,
    cookies: Vec<String>,
    set_cookie: Vec<String>,
}

/// A request as a browser on the manager's page would make it.
struct Call<'a> {
    method: Method,
    path: &'a str,
    cookies: Vec<String>,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl<'a> Call<'a> {
    fn get(path: &'a str) -> Self {
        Call {
            method: Method::GET,
            path,
            cookies: Vec::new(),
            body: None,
            headers: Vec::new(),
        }
    }

    fn with(method: Method, path: &'a str) -> Self {
        Call {
            method,
            ..Call::get(path)
        }
    }

    fn cookie(mut self, c: &str) -> Self {
        self.cookies.push(c.to_string());
        self
    }

    fn json(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

/// The client in the broker's namespace.
struct Browser {
    runtime: Option<tokio::runtime::Runtime>,
    client: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(lab: &Lab) -> anyhow::Result<Browser> {
        Browser::at(lab, BASE, reqwest::Client::new())
    }

    fn at(lab: &Lab, base: &str, client: reqwest::Client) -> anyhow::Result<Browser> {
        Ok(Browser {
            runtime: Some(lab.net.broker.runtime()?),
            client,
            base: base.to_string(),
        })
    }

    async fn send(&self, call: Call<'_>) -> Answer {
        let mut request = self
            .client
            .request(call.method, format!("{}{}", self.base, call.path));
        if !call.cookies.is_empty() {
            request = request.header(header::COOKIE, call.cookies.join("; "));
        }
        for (name, value) in call.headers {
            request = request.header(name, value);
        }
        if let Some(body) = call.body {
            request = request.json(&body);
        }
        let path = call.path.to_string();
        let runtime = self.runtime.as_ref().expect("until drop");
        runtime
            .spawn(async move {
                let response = request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                let status = response.status();
                let set_cookie: Vec<String> = response
                    .headers()
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect();
                let cookies = set_cookie
                    .iter()
                    .map(|v| v.split(';').next().unwrap().to_string())
                    .collect();
                let text = response.text().await.unwrap();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Answer {
                    status,
                    body,
                    cookies,
                    set_cookie,
                }
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The message to sign for `address`, and the login cookie.
    async fn challenge(&self, address: Address) -> (String, String) {
        let a = self
            .send(Call::get(&format!("/manager/api/login?address={address}")))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let cookie = a
            .cookies
            .iter()
            .find(|c| c.starts_with("bhb_login="))
            .unwrap_or_else(|| panic!("no login cookie: {:?}", a.cookies))
            .clone();
        (a.body["message"].as_str().unwrap().to_string(), cookie)
    }

    /// Posts `message` signed by `key` with the login cookie `cookie`.
    async fn login(&self, key: &PrivateKeySigner, message: &str, cookie: Option<&str>) -> Answer {
        let signature = key.sign_message_sync(message.as_bytes()).unwrap();
        let mut call = Call::with(Method::POST, "/manager/api/login").json(json!({
            "message": message,
            "signature": format!("0x{}", hex::encode(signature.as_bytes())),
        }));
        if let Some(c) = cookie {
            call = call.cookie(c);
        }
        self.send(call).await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn refused(a: &Answer, needle: &str) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let message = a.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", a.body));
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// `message` with the line starting with `field` replaced.
fn with_line(message: &str, field: &str, line: &str) -> String {
    message
        .split('\n')
        .map(|l| if l.starts_with(field) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn admins_sign_in_with_their_wallet_and_release_through_the_daemon() {
    lab_test("mgr", async |lab: &mut Lab| {
        let admin: PrivateKeySigner = ADMIN_KEY.parse()?;
        let stranger: PrivateKeySigner = STRANGER_KEY.parse()?;
        lab.config.manager.admins = vec![admin.address()];
        // A pool whose figures fit JSON's integers (as in tests/http_api.rs).
        lab.config.broker.pool = Pool::new("2001:db8:100::/64".parse()?, 120)?;
        lab.start_broker_serving(None)?;
        lab.request_from_new_server().await?;
        lab.wait_answered(1).await?;
        let b = Browser::new(lab)?;

        // The page, with a policy that lets nothing in from elsewhere.
        let page = b.send(Call::get("/manager/")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.body.as_str().unwrap().contains("<html"),
            "{}",
            page.body
        );
        let key = std::fs::read_to_string(
            lab.config
                .database
                .path
                .parent()
                .unwrap()
                .join("manager-session.key"),
        )?;
        assert_eq!(key.trim().len(), 64);

        // Nothing without a session.
        let a = b.send(Call::get("/manager/api/status")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        assert_eq!(a.body["error"], "not signed in");

        // A wallet not listed.
        let (message, cookie) = b.challenge(stranger.address()).await;
        assert!(
            message
                .starts_with("127.0.0.1:8080 wants you to sign in with your Ethereum account:\n"),
            "{message}"
        );
        assert!(
            message.contains("\nURI: http://127.0.0.1:8080/manager/\n"),
            "{message}"
        );
        let chain = format!("\nChain ID: {}\n", lab.config.onchain.chain_id);
        assert!(message.contains(&chain), "{message}");
        refused(
            &b.login(&stranger, &message, Some(&cookie)).await,
            &format!("{} is not listed in [manager] admins", stranger.address()),
        );

        // The admin's signature over messages that are not this manager's.
        let (message, cookie) = b.challenge(admin.address()).await;
        let phished = message.replacen("127.0.0.1:8080 wants", "broker-manager.example wants", 1);
        refused(
            &b.login(&admin, &phished, Some(&cookie)).await,
            "made for broker-manager.example, not for this manager at 127.0.0.1:8080",
        );
        let other_chain = with_line(&message, "Chain ID:", "Chain ID: 1");
        refused(
            &b.login(&admin, &other_chain, Some(&cookie)).await,
            &format!(
                "is for chain 1, and this broker's chain is {}",
                lab.config.onchain.chain_id
            ),
        );
        let expired = with_line(
            &message,
            "Expiration Time:",
            "Expiration Time: 2020-01-01T00:00:00Z",
        );
        refused(
            &b.login(&admin, &expired, Some(&cookie)).await,
            "expired at 2020-01-01T00:00:00Z",
        );
        // Another signer than the address it names.
        let a = b.login(&stranger, &message, Some(&cookie)).await;
        refused(&a, &format!("was signed by {}", stranger.address()));
        // Signed right, but posted by a browser that was not given the nonce.
        refused(
            &b.login(&admin, &message, None).await,
            "not given the message's nonce",
        );
        let (_, other_cookie) = b.challenge(admin.address()).await;
        refused(
            &b.login(&admin, &message, Some(&other_cookie)).await,
            "not given the message's nonce",
        );
        // From another site's page.
        let signature = admin.sign_message_sync(message.as_bytes())?;
        let signed = json!({
            "message": message,
            "signature": format!("0x{}", hex::encode(signature.as_bytes())),
        });
        let a = b
            .send(
                Call::with(Method::POST, "/manager/api/login")
                    .cookie(&cookie)
                    .json(signed.clone())
                    .header("origin", "https://broker-manager.example"),
            )
            .await;
        refused(&a, "only the manager's own page");

        // None of those spent the nonce: the admin logs in, once.
        let a = b.login(&admin, &message, Some(&cookie)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["address"], format!("{:#x}", admin.address()));
        assert_eq!(a.body["chain_id"], lab.config.onchain.chain_id);
        let csrf = a.body["csrf"].as_str().unwrap().to_string();
        let session = a
            .cookies
            .iter()
            .find(|c| c.starts_with("bhb_session=") && c.len() > "bhb_session=".len())
            .unwrap_or_else(|| panic!("no session cookie: {:?}", a.cookies))
            .clone();
        assert!(
            a.cookies.contains(&"bhb_login=".to_string()),
            "{:?}",
            a.cookies
        );
        refused(
            &b.login(&admin, &message, Some(&cookie)).await,
            "used already",
        );

        // The dashboard's figures: the API's own.
        let a = b
            .send(Call::get("/manager/api/session").cookie(&session))
            .await;
        assert_eq!((a.status, &a.body["csrf"]), (StatusCode::OK, &json!(csrf)));
        let status = b
            .send(Call::get("/manager/api/status").cookie(&session))
            .await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.body);
        assert_eq!(status.body["used_allocations"], 1);
        assert!(
            status.body["wallet"]["balance_wei"].is_string(),
            "{}",
            status.body
        );
        let all = b
            .send(Call::get("/manager/api/allocations").cookie(&session))
            .await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.body);
        let listed = all.body.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{}", all.body);
        let prefix = listed[0]["prefix"].as_str().unwrap().to_string();
        assert_eq!(lab.list_allocations(None)?[0].prefix.to_string(), prefix);

        // A release needs the CSRF token, and the manager's own origin.
        let path = format!("/manager/api/allocations/{prefix}");
        let release = || Call::with(Method::DELETE, &path).cookie(&session);
        refused(&b.send(release()).await, "CSRF token");
        refused(
            &b.send(release().header(CSRF_HEADER, "00")).await,
            "CSRF token",
        );
        let foreign = release()
            .header(CSRF_HEADER, &csrf)
            .header("origin", "https://broker-manager.example");
        refused(&b.send(foreign).await, "only the manager's own page");
        assert_eq!(lab.list_allocations(None)?.len(), 1);
        let a = b
            .send(release().header(CSRF_HEADER, &csrf).header("origin", BASE))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["prefix"], prefix.as_str());
        assert_eq!(a.body["peer_removed"], true, "{}", a.body);
        assert_eq!(a.body["route_removed"], true, "{}", a.body);
        assert_eq!(a.body["ndp_entry_removed"], true, "{}", a.body);
        assert_eq!(a.body["on_chain"]["outcome"], "sent", "{}", a.body);
        assert!(lab.list_allocations(None)?.is_empty());
        let again = b.send(release().header(CSRF_HEADER, &csrf)).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.body);

        // Logout ends the session for that cookie, wherever it is kept.
        let a = b
            .send(
                Call::with(Method::POST, "/manager/api/logout")
                    .cookie(&session)
                    .header(CSRF_HEADER, &csrf),
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        assert!(
            a.cookies.contains(&"bhb_session=".to_string()),
            "{:?}",
            a.cookies
        );
        let a = b
            .send(Call::get("/manager/api/status").cookie(&session))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains("logged out"),
            "{}",
            a.body
        );
        // And after a restart of the daemon (the same key: other sessions
        // would hold).
        lab.stop_broker()?;
        lab.start_broker_serving(None)?;
        let a = b
            .send(Call::get("/manager/api/status").cookie(&session))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains("logged out"),
            "{}",
            a.body
        );
        let forged = session.replace("bhb_session=", "bhb_session=0");
        let a = b
            .send(Call::get("/manager/api/status").cookie(&forged))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);

        // Login attempts are limited per address (the limit counts those
        // above too).
        let mut limited = None;
        for n in 0..=LOGIN_BURST {
            let a = b
                .send(Call::get(&format!(
                    "/manager/api/login?address={}",
                    admin.address()
                )))
                .await;
            if a.status == StatusCode::TOO_MANY_REQUESTS {
                limited = Some((n, a.body));
                break;
            }
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        }
        let (_, body) = limited.expect("no login limit within its burst");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("too many login attempts"),
            "{body}"
        );
        // The rest of the API is not limited by it.
        let a = b
            .send(Call::get("/manager/api/session").cookie(&session))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        Ok(())
    });
}

#[test]
fn over_tls_the_message_names_https_and_the_cookies_are_secure() {
    let certs = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![BROKER_V4.to_string()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    let listen = format!("{BROKER_V4}:8443");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    lab_test("mgt", async |lab: &mut Lab| {
        let admin: PrivateKeySigner = ADMIN_KEY.parse()?;
        lab.config.manager.admins = vec![admin.address()];
        lab.config.api = Some(config::Api {
            listen: listen.parse()?,
            tls_cert: Some(cert_file),
            tls_key: Some(key_file),
            insecure_plaintext: false,
        });
        lab.start_broker_serving(None)?;
        let b = Browser::at(lab, &format!("https://{listen}"), client)?;
        let a = b
            .send(Call::get(&format!(
                "/manager/api/login?address={}",
                admin.address()
            )))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let message = a.body["message"].as_str().unwrap().to_string();
        assert!(
            message.starts_with(&format!("{listen} wants you")),
            "{message}"
        );
        assert!(
            message.contains(&format!("\nURI: https://{listen}/manager/\n")),
            "{message}"
        );
        let line = &a.set_cookie[0];
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/manager/",
            "Max-Age=300",
        ] {
            assert!(line.contains(attribute), "{attribute} not in {line}");
        }
        let a = b.login(&admin, &message, Some(&a.cookies[0])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let session = a
            .set_cookie
            .iter()
            .find(|c| c.starts_with("bhb_session="))
            .unwrap();
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=3600"] {
            assert!(session.contains(attribute), "{attribute} not in {session}");
        }
        Ok(())
    });
}
