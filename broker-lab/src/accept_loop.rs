//! A TCP accept loop on a thread of its own that ends when its handle is
//! dropped: what the lab's RPC stand-ins (relay, limited endpoint) share.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

pub struct AcceptLoop {
    addr: SocketAddr,
    closed: Arc<AtomicBool>,
}

impl AcceptLoop {
    /// Hands every accepted connection to `serve` until dropped.
    pub fn spawn(
        listener: TcpListener,
        serve: impl Fn(TcpStream) + Send + 'static,
    ) -> std::io::Result<AcceptLoop> {
        let addr = listener.local_addr()?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                serve(client);
            }
        });
        Ok(AcceptLoop { addr, closed })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the address it listens on.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `closed`.
        if let Ok(s) = TcpStream::connect(self.addr) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}
