//! An RPC endpoint whose fault the test switches at any moment, for the
//! fault campaign: connections dropped without an answer, calls that hang,
//! HTTP 429 (a provider's rate limit), or the answer of another chain to
//! `eth_chainId`. Everything else passes through to the chain. It listens
//! in the network namespace of the thread that starts it, one thread per
//! connection.

use std::{
    io::{BufReader, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    accept_loop::AcceptLoop,
    rpc_limits::{forward, read_message},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// The connection is closed as soon as a call arrives.
    Drop = 1,
    /// Calls are read and never answered (until the fault changes; then
    /// the connection is closed).
    Stall = 2,
    /// `429 Too Many Requests`, as a rate-limited provider answers.
    TooManyRequests = 3,
    /// `eth_chainId` answers 0x1 (mainnet), everything else passes.
    WrongChain = 4,
}

impl Fault {
    fn from_code(code: u8) -> Fault {
        [
            Fault::None,
            Fault::Drop,
            Fault::Stall,
            Fault::TooManyRequests,
            Fault::WrongChain,
        ]
        .get(usize::from(code))
        .copied()
        .unwrap_or(Fault::None)
    }
}

pub struct FaultyRpc {
    /// `http://` and the address it listens on.
    pub url: String,
    fault: Arc<AtomicU8>,
    faulted: Arc<AtomicUsize>,
    _accept: AcceptLoop,
}

impl FaultyRpc {
    /// Serves `<host>:<free port>`, passing calls to `target`
    /// (`http://host:port`) while no fault is set.
    pub fn start(host: IpAddr, target: &str) -> anyhow::Result<FaultyRpc> {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind(SocketAddr::new(host, 0))
            .with_context(|| format!("binding the faulty RPC endpoint to {host}"))?;
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let faulted = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fault.clone(), faulted.clone());
        let accept = AcceptLoop::spawn(listener, move |client| {
            let (target, f, n) = (target.clone(), f.clone(), n.clone());
            // A closed connection ends the thread; nothing to report.
            thread::spawn(move || serve(client, &target, &f, &n));
        })?;
        Ok(FaultyRpc {
            url: accept.url(),
            fault,
            faulted,
            _accept: accept,
        })
    }

    /// From now on, calls meet `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// How many calls met a fault so far.
    pub fn faulted(&self) -> usize {
        self.faulted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyRpc {
    /// Ends the stalled calls' threads.
    fn drop(&mut self) {
        self.set(Fault::None);
    }
}

fn serve(client: TcpStream, target: &str, fault: &AtomicU8, faulted: &AtomicUsize) {
    let Ok(reader) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut writer = client;
    while let Ok(Some(body)) = read_message(&mut reader) {
        let now = Fault::from_code(fault.load(Ordering::SeqCst));
        if now != Fault::None {
            faulted.fetch_add(1, Ordering::SeqCst);
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = match now {
            Fault::Drop => break,
            Fault::Stall => {
                while Fault::from_code(fault.load(Ordering::SeqCst)) == Fault::Stall {
                    thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            Fault::TooManyRequests => {
                let refused = writer.write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\nToo Many Requests",
                );
                if refused.is_err() {
                    break;
                }
                continue;
            }
            Fault::WrongChain if request["method"] == "eth_chainId" => {
                json!({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"})
                    .to_string()
                    .into_bytes()
            }
            Fault::WrongChain | Fault::None => match forward(target, &body) {
                Ok(answer) => answer,
                Err(_) => break,
            },
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(&answer).is_err()
            || writer.flush().is_err()
        {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}
