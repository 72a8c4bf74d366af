//! The shared chain layer against a real anvil (and two tiny HTTP
//! endpoints that misbehave on purpose): reverts decoded from what a real
//! node answers, sends from clones that never share a nonce, the timeout
//! and retry layers, and endpoints shown without their path.
//!
//! Every test starts its own anvil on its own free port, so they run in
//! parallel.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    providers::Provider as _,
};
use broker_contracts::{
    BrokerRequests,
    chain::{ChainError, ChainOptions, Connection},
    devchain::{DevChain, Options, anvil_signer},
};

async fn connect(dev: &DevChain, signer: usize) -> Connection {
    Connection::connect(
        &dev.rpc_url,
        dev.chain_id,
        Some(anvil_signer(signer)),
        ChainOptions::default(),
    )
    .await
    .expect("connects")
}

#[tokio::test]
async fn reverts_are_decoded_and_nothing_is_sent() {
    let dev = DevChain::start(&Options::default()).await.unwrap();
    let stranger = connect(&dev, 2).await;
    let requests = BrokerRequests::new(dev.requests, stranger.provider());

    // The contract's custom error, decoded through its bindings.
    let tx = requests
        .setTotalCapacity(U256::from(7))
        .into_transaction_request();
    let e = stranger
        .transact("setTotalCapacity(7)", tx)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::Reverted { tx: None, .. }), "{e:?}");
    let expected = format!(
        "setTotalCapacity(7): reverted: OwnableUnauthorizedAccount({})",
        anvil_signer(2).address()
    );
    assert!(e.to_string().starts_with(&expected), "{e}");

    // Error(string).
    let tx = requests
        .releaseOwnAllocation(Address::repeat_byte(0x77))
        .into_transaction_request();
    let e = stranger
        .transact("releaseOwnAllocation", tx)
        .await
        .unwrap_err();
    assert_eq!(e.revert_reason(), Some("Sender does not own NFT contract"));

    // A simulation that reverts sends nothing.
    let nonce = stranger
        .provider()
        .get_transaction_count(anvil_signer(2).address())
        .await
        .unwrap();
    assert_eq!(nonce, 0);

    // A view of an address without code: no answer data.
    let e = stranger
        .view(
            "getRequestCount() on an account",
            BrokerRequests::new(anvil_signer(3).address(), stranger.provider())
                .getRequestCount()
                .call(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::BadData { .. }), "{e:?}");
    assert!(e.to_string().contains("no answer data"), "{e}");
}

#[tokio::test]
async fn clones_send_concurrently_without_sharing_a_nonce() {
    let dev = DevChain::start(&Options::default()).await.unwrap();
    let operator = connect(&dev, 1).await;
    let other = operator.clone();
    let send = |conn: Connection, capacity: u64| async move {
        let tx = BrokerRequests::new(dev.requests, conn.provider())
            .setTotalCapacity(U256::from(capacity))
            .into_transaction_request();
        conn.transact(&format!("setTotalCapacity({capacity})"), tx)
            .await
    };
    let (a, b) = tokio::join!(send(operator.clone(), 5), send(other, 6));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status() && b.status());
    assert_ne!(a.transaction_hash, b.transaction_hash);

    // A connection without a key reads, and refuses to send.
    let reader = Connection::connect(&dev.rpc_url, dev.chain_id, None, ChainOptions::default())
        .await
        .unwrap();
    let capacity = reader
        .view(
            "totalCapacity()",
            BrokerRequests::new(dev.requests, reader.provider())
                .totalCapacity()
                .call(),
        )
        .await
        .unwrap();
    assert!(capacity == U256::from(5) || capacity == U256::from(6));
    let tx = BrokerRequests::new(dev.requests, reader.provider())
        .setTotalCapacity(U256::from(1))
        .into_transaction_request();
    let e = reader
        .transact("setTotalCapacity(1)", tx)
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::Config(_)), "{e:?}");

    // Another chain than asked for.
    match Connection::connect(&dev.rpc_url, 1, None, ChainOptions::default()).await {
        Err(ChainError::WrongChain {
            url,
            expected: 1,
            actual: 31337,
        }) => assert_eq!(url, dev.rpc_url.trim_end_matches('/')),
        other => panic!("{other:?}"),
    }
}

/// Reads one HTTP request; its JSON-RPC id.
fn read_request(stream: &mut TcpStream) -> Option<serde_json::Value> {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let request: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(request["id"].clone())
}

/// An endpoint that answers `eth_chainId` with 31337, after refusing the
/// first `refusals` requests with HTTP 429; counts the requests it saw.
fn rate_limited_endpoint(refusals: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v3/secret-key", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            while let Some(id) = read_request(&mut stream) {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if n < refusals {
                    ("429 Too Many Requests", String::new())
                } else {
                    (
                        "200 OK",
                        serde_json::json!({"jsonrpc": "2.0", "id": id, "result": "0x7a69"})
                            .to_string(),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (url, seen)
}

#[tokio::test]
async fn rate_limits_are_retried_then_transient() {
    let (url, seen) = rate_limited_endpoint(2);
    let conn = Connection::connect(&url, 31337, None, ChainOptions::default())
        .await
        .expect("the third attempt answers");
    assert_eq!(conn.chain_id(), 31337);
    assert_eq!(seen.load(Ordering::SeqCst), 3);

    let (url, seen) = rate_limited_endpoint(usize::MAX);
    let options = ChainOptions {
        rate_limit_retries: 1,
        ..ChainOptions::default()
    };
    let e = Connection::connect(&url, 31337, None, options)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("eth_chainId: the RPC endpoint http://127.0.0.1:"),
        "{e}"
    );
    assert!(e.to_string().contains("is rate limiting"), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "one retry");
}

#[tokio::test]
async fn a_silent_endpoint_times_out_and_its_path_is_never_shown() {
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", black_hole.local_addr().unwrap());
    let options = ChainOptions {
        rpc_timeout: Duration::from_millis(300),
        ..ChainOptions::default()
    };
    let t = Instant::now();
    let e = Connection::connect(
        &format!("{origin}/v3/secret-key?token=secret"),
        31337,
        None,
        options,
    )
    .await
    .unwrap_err();
    let took = t.elapsed();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("eth_chainId: no answer from {origin} in 0.3s")
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // Nothing listening: quick, and the path is not shown either.
    drop(black_hole);
    let e = Connection::connect(
        &format!("{origin}/v3/secret-key"),
        31337,
        None,
        ChainOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "eth_chainId: cannot reach the RPC endpoint {origin}: "
        )),
        "{e}"
    );
    assert!(!e.to_string().contains("secret"), "{e}");
}
