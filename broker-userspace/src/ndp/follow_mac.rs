//! Keeps advertising the upstream interface's MAC as it is now: answers
//! with the old one after an `ip link set address` (or a hypervisor's new
//! NIC) would send the router's traffic for every allocation to a MAC
//! nobody has.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Responder;

/// How often the interface's MAC is compared with the one advertised.
pub const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct MacFollower {
    checked: Option<Instant>,
    /// The last failure to read the MAC, logged once rather than each time.
    error: Option<String>,
}

impl MacFollower {
    /// Compares and updates, at most once an [`INTERVAL`]; cheap enough to
    /// call from any loop (an ioctl and a map read).
    pub fn check(&mut self, responder: &mut Responder) {
        if self.checked.is_some_and(|at| at.elapsed() < INTERVAL) {
            return;
        }
        self.checked = Some(Instant::now());
        match responder.refresh_link_layer() {
            Ok(changed) => {
                if let Some(mac) = changed {
                    let mac = mac.map(|b| format!("{b:02x}")).join(":");
                    info!(%mac, "the interface's MAC changed: advertising the new one");
                }
                self.error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if self.error.as_ref() != Some(&e) {
                    warn!("reading the interface's MAC: {e}");
                }
                self.error = Some(e);
            }
        }
    }
}
