//! A TCP relay to an RPC endpoint that can be stalled (it keeps accepting
//! connections and reading requests, and answers nothing: an endpoint that
//! hangs) and resumed. It listens in the network namespace of the thread
//! that starts it.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use anyhow::Context as _;

use crate::accept_loop::AcceptLoop;

pub struct Relay {
    /// `http://` and the address it listens on.
    pub url: String,
    stalled: Arc<AtomicBool>,
    _accept: AcceptLoop,
}

impl Relay {
    /// Relays `<host>:<free port>` to `target` (`http://host:port`).
    pub fn start(host: IpAddr, target: &str) -> anyhow::Result<Relay> {
        Self::listen(SocketAddr::new(host, 0), target)
    }

    /// Relays `listen` to `target` (`http://host:port`).
    pub fn listen(listen: SocketAddr, target: &str) -> anyhow::Result<Relay> {
        let target = target.trim_start_matches("http://").to_string();
        let listener =
            TcpListener::bind(listen).with_context(|| format!("binding the relay to {listen}"))?;
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let accept = AcceptLoop::spawn(listener, move |client| {
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let flag = flag.clone();
            thread::spawn(move || pump(client, server, Some(flag)));
            thread::spawn(move || pump(s2, c2, None));
        })?;
        Ok(Relay {
            url: accept.url(),
            stalled,
            _accept: accept,
        })
    }

    /// From now on, requests get no answer (on old and new connections).
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// New requests are relayed again (a connection that swallowed one
    /// stays dead; clients give up on it and open new ones).
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, stall: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stall.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            // Swallow this and everything after it; keep the connection open.
            while from.read(&mut buf).is_ok_and(|n| n > 0) {}
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
