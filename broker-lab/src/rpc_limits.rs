//! An RPC endpoint with a hosted provider's limits: an HTTP proxy in front
//! of the chain that refuses an `eth_getLogs` call spanning more than
//! `max_blocks` blocks (code -32602, "block range is too wide"), or whose
//! answer holds more than `max_results` logs (code -32005, "query returned
//! more than N results", as Infura words it). On demand it also refuses
//! one `eth_sendRawTransaction` (code -32000, "txpool is full", as geth
//! words it: see [`LimitedRpc::refuse_send`]). Everything else passes
//! through. It listens in the network namespace of the thread that
//! starts it, one thread per connection (keep-alive honoured).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::accept_loop::AcceptLoop;

/// What the endpoint refuses.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_blocks: u64,
    pub max_results: usize,
}

pub struct LimitedRpc {
    /// `http://` and the address it listens on.
    pub url: String,
    refused: Arc<AtomicUsize>,
    sends: Arc<Sends>,
    _accept: AcceptLoop,
}

/// The `eth_sendRawTransaction` calls seen, and which one to refuse (its
/// number, counted from 1; 0: none).
#[derive(Default)]
struct Sends {
    seen: AtomicUsize,
    refuse: AtomicUsize,
}

impl LimitedRpc {
    /// Serves `<host>:<free port>`, passing what it allows to `target`
    /// (`http://host:port`).
    pub fn start(host: IpAddr, target: &str, limits: Limits) -> anyhow::Result<LimitedRpc> {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind(SocketAddr::new(host, 0))
            .with_context(|| format!("binding the limited RPC endpoint to {host}"))?;
        let refused = Arc::new(AtomicUsize::new(0));
        let sends = Arc::new(Sends::default());
        let (count, seen) = (refused.clone(), sends.clone());
        let accept = AcceptLoop::spawn(listener, move |client| {
            let (target, count, seen) = (target.clone(), count.clone(), seen.clone());
            thread::spawn(move || {
                // A closed connection ends the thread; nothing to report.
                let _ = serve(client, &target, limits, &count, &seen);
            });
        })?;
        Ok(LimitedRpc {
            url: accept.url(),
            refused,
            sends,
            _accept: accept,
        })
    }

    /// Refuses the `nth` `eth_sendRawTransaction` from now on (1: the
    /// next), without passing it to the chain.
    pub fn refuse_send(&self, nth: usize) {
        let seen = self.sends.seen.load(Ordering::SeqCst);
        self.sends.refuse.store(seen + nth, Ordering::SeqCst);
    }

    /// How many calls it refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Answers the requests of one client connection until it closes.
fn serve(
    client: TcpStream,
    target: &str,
    limits: Limits,
    refused: &AtomicUsize,
    sends: &Sends,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        let Some(body) = read_message(&mut reader)? else {
            return Ok(());
        };
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = match too_wide(&request, limits).or_else(|| refused_send(&request, sends)) {
            Some(error) => {
                refused.fetch_add(1, Ordering::SeqCst);
                error
            }
            None => {
                let answer = forward(target, &body)?;
                match too_many(&request, &answer, limits) {
                    Some(error) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        error
                    }
                    None => answer,
                }
            }
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        )?;
        writer.write_all(&answer)?;
        writer.flush()?;
    }
}

/// The refusal of the send [`LimitedRpc::refuse_send`] asked for.
fn refused_send(request: &Value, sends: &Sends) -> Option<Vec<u8>> {
    if request["method"] != "eth_sendRawTransaction" {
        return None;
    }
    let number = sends.seen.fetch_add(1, Ordering::SeqCst) + 1;
    (number == sends.refuse.load(Ordering::SeqCst))
        .then(|| refusal(request, -32000, "txpool is full".into()))
}

fn is_get_logs(request: &Value) -> bool {
    request["method"] == "eth_getLogs"
}

fn refusal(request: &Value, code: i64, message: String) -> Vec<u8> {
    json!({
        "jsonrpc": "2.0",
        "id": request["id"],
        "error": {"code": code, "message": message},
    })
    .to_string()
    .into_bytes()
}

fn block_number(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn too_wide(request: &Value, limits: Limits) -> Option<Vec<u8>> {
    if !is_get_logs(request) {
        return None;
    }
    let filter = &request["params"][0];
    let (from, to) = (
        block_number(&filter["fromBlock"])?,
        block_number(&filter["toBlock"])?,
    );
    let blocks = to.saturating_sub(from) + 1;
    (blocks > limits.max_blocks).then(|| {
        refusal(
            request,
            -32602,
            format!(
                "block range is too wide: {blocks} blocks, at most {} allowed",
                limits.max_blocks
            ),
        )
    })
}

fn too_many(request: &Value, answer: &[u8], limits: Limits) -> Option<Vec<u8>> {
    if !is_get_logs(request) {
        return None;
    }
    let answer: Value = serde_json::from_slice(answer).ok()?;
    let results = answer["result"].as_array()?.len();
    (results > limits.max_results).then(|| {
        refusal(
            request,
            -32005,
            format!("query returned more than {} results", limits.max_results),
        )
    })
}

/// One JSON-RPC call to `target` on a connection of its own; the answer's
/// body.
pub(crate) fn forward(target: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut upstream =
        TcpStream::connect(target).with_context(|| format!("connecting {target}"))?;
    write!(
        upstream,
        "POST / HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    upstream.write_all(body)?;
    let mut reader = BufReader::new(upstream);
    read_message(&mut reader)?.context("the chain closed the connection without answering")
}

/// Reads one HTTP message (request or response) and returns its body; None
/// at a clean end of the connection.
pub(crate) fn read_message(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Vec<u8>>> {
    let mut length = None;
    let mut chunked = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            if first {
                return Ok(None);
            }
            bail!("the connection ended inside a header");
        }
        first = false;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = Some(value.parse::<usize>()?);
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Some(body))
}
