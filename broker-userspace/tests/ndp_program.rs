//! The responder run through BPF_PROG_TEST_RUN with crafted frames: each
//! answer checked byte by byte against a reference model written apart from
//! the program (broker-lab's ndp_frames.rs), and 100,000 random and mutated
//! frames on which the program and the model must agree exactly. Every frame
//! goes through both entry points, XDP and TC (the TC one serves L3 devices;
//! its test runs get Ethernet frames, so its L3 mode is covered by the TUN
//! test in ndp_netns.rs). And the program's own log records: on the rare
//! paths only, and at the level asked.
//!
//! Needs root (loading programs); `cargo xtask test` runs it so.

use std::{
    net::Ipv6Addr,
    sync::{Arc, Mutex},
};

use aya::programs::{TestRun, TestRunOptions};
use broker_lab::{
    ndp_frames::{self, BROKER_MAC, Model, Ns, ROUTER_IP, Verdict, checksum},
    pins::TestPins,
};
use broker_userspace::ndp::{Counters, LinkLayer, Responder, ResponderOptions};
use ipnet::Ipv6Net;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tracing::Level;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A loaded, configured program with its own pins, and the model of it.
struct Harness {
    responder: Responder,
    model: Model,
    _pins: TestPins,
}

impl Harness {
    fn new(tag: &str, router: bool, l3: bool) -> Self {
        Self::with_log_level(tag, router, l3, None)
    }

    /// With the program's log records on at `level`.
    fn with_log_level(tag: &str, router: bool, l3: bool, level: Option<Level>) -> Self {
        let options = ResponderOptions { router, vlan: None };
        Self::with_options(tag, l3, options, level)
    }

    fn with_options(tag: &str, l3: bool, options: ResponderOptions, level: Option<Level>) -> Self {
        let pins = TestPins::new(tag);
        let mut responder =
            Responder::load_with_log_level(&pins.dir, level).expect("load the program (as root)");
        let link_layer = if l3 {
            LinkLayer::None
        } else {
            LinkLayer::Ethernet(BROKER_MAC)
        };
        responder.configure_detached(link_layer, options).unwrap();
        let prefixes: Vec<Ipv6Net> = ["2001:db8:1::/64", "2001:db8:2::100/120", "fd00:5::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        responder.reconcile(&prefixes).unwrap();
        Harness {
            responder,
            model: Model {
                prefixes,
                mac: BROKER_MAC,
                router: options.router,
                l3,
                vlan: options.vlan,
            },
            _pins: pins,
        }
    }

    /// Runs the XDP program once on `frame`: (action, frame afterwards).
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            self.responder.program().unwrap().test_run(opts).unwrap()
        };
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the TC program once on `frame`: (action, frame afterwards), or
    /// None when the kernel refuses the test run: it does for an skb whose
    /// IPv6 header is incomplete (shorter than Ethernet + one tag + 40 bytes).
    fn run_tc(&mut self, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            self.responder.tc_program().unwrap().test_run(opts)
        };
        match result {
            Ok(result) => {
                out.truncate(result.data_size_out as usize);
                Some((result.return_value, out))
            }
            Err(_) if frame.len() < 14 + 4 + 40 => None,
            Err(e) => panic!("TC test run of {} bytes: {e}", frame.len()),
        }
    }

    /// How many program runs (so counter increments) one `check` makes.
    fn runs_per_check(&self) -> u64 {
        if self.model.l3 { 1 } else { 2 }
    }

    /// Runs `frame` and checks the program did exactly what the model says.
    fn check(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self.model.verdict(frame);
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header
        // (no driver delivers one either).
        if frame.len() < 14 {
            assert!(!matches!(verdict, Verdict::Answer(_)));
            return verdict;
        }
        let (action, out) = self.run(frame);
        Self::agree("XDP", &verdict, frame, action, &out, (XDP_TX, XDP_PASS));
        if !self.model.l3
            && let Some((action, out)) = self.run_tc(frame)
        {
            Self::agree(
                "TC",
                &verdict,
                frame,
                action,
                &out,
                (TC_ACT_REDIRECT, TC_ACT_OK),
            );
        }
        verdict
    }

    fn agree(
        program: &str,
        verdict: &Verdict,
        frame: &[u8],
        action: u32,
        out: &[u8],
        (answer, pass): (u32, u32),
    ) {
        match verdict {
            Verdict::Answer(expected) => {
                assert_eq!(
                    action, answer,
                    "{program}: expected an answer to {frame:02x?}"
                );
                assert_eq!(
                    out, expected,
                    "{program}: answer differs from the model\n   in: {frame:02x?}"
                );
            }
            _ => {
                assert_eq!(
                    action, pass,
                    "{program}: {verdict:?} must pass: {frame:02x?}"
                );
                assert_eq!(out, frame, "{program}: a passed frame must be untouched");
            }
        }
    }

    fn counters(&self) -> Counters {
        self.responder.counters().unwrap()
    }
}

/// The advertisement's ICMPv6 body, checked with the reference checksum.
fn na_body(out: &[u8], l3_off: usize) -> &[u8] {
    let ip = &out[l3_off..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    let body = &ip[40..];
    assert_eq!(checksum(src, dst, body), 0, "NA checksum");
    body
}

#[test]
fn answers_a_multicast_solicitation_byte_for_byte() {
    let mut h = Harness::new("hit", false, false);
    let ns = Ns::multicast(a("2001:db8:1::abcd"));
    let frame = ns.frame();
    assert!(matches!(h.check(&frame), Verdict::Answer(_)));
    let (_, out) = h.run(&frame);
    // Spelled out once, field by field, beyond the model's agreement.
    assert_eq!(&out[0..6], &ndp_frames::ROUTER_MAC, "to the solicitor");
    assert_eq!(&out[6..12], &BROKER_MAC, "from us");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(out[14] >> 4, 6);
    assert_eq!(u16::from_be_bytes([out[18], out[19]]), 32, "payload length");
    assert_eq!(out[20], 58);
    assert_eq!(out[21], 255, "hop limit");
    assert_eq!(
        &out[22..38],
        &a("2001:db8:1::abcd").octets(),
        "source = target"
    );
    assert_eq!(&out[38..54], &ndp_frames::ROUTER_IP.octets());
    let body = na_body(&out, 14);
    assert_eq!(body[0], 136);
    assert_eq!(body[1], 0);
    assert_eq!(body[4], 0x40, "Solicited set, Router and Override clear");
    assert_eq!(&body[8..24], &a("2001:db8:1::abcd").octets());
    assert_eq!(&body[24..26], &[2, 1], "target link-layer option");
    assert_eq!(&body[26..32], &BROKER_MAC);
    assert_eq!(out.len(), 14 + 40 + 32);
    // One check (XDP and TC) and one more XDP run.
    let c = h.counters();
    let runs = h.runs_per_check() + 1;
    assert_eq!((c.seen, c.answered), (runs, runs));
}

#[test]
fn answers_every_address_of_a_120_and_none_beside_it() {
    let mut h = Harness::new("edges", false, false);
    for last in 0..=255u16 {
        let target = a(&format!("2001:db8:2::1{last:02x}"));
        assert!(matches!(
            h.check(&Ns::multicast(target).frame()),
            Verdict::Answer(_)
        ));
    }
    for outside in [
        "2001:db8:2::ff",
        "2001:db8:2::200",
        "2001:db8:3::1",
        "2001:db8::1",
    ] {
        assert_eq!(
            h.check(&Ns::multicast(a(outside)).frame()),
            Verdict::NotOurs,
            "{outside}"
        );
    }
    let c = h.counters();
    let runs = h.runs_per_check();
    assert_eq!((c.answered, c.not_ours), (256 * runs, 4 * runs));
}

#[test]
fn unicast_probe_without_options_grows_into_an_answer() {
    let mut h = Harness::new("nud", false, false);
    let frame = Ns::unicast(a("fd00:5:0:7::9")).frame();
    assert_eq!(frame.len(), 14 + 40 + 24);
    let v = h.check(&frame);
    assert!(matches!(v, Verdict::Answer(_)), "{v:?}");
}

#[test]
fn dad_probe_is_defended_to_all_nodes_without_solicited_flag() {
    let mut h = Harness::new("dad", true, false);
    let (action, out) = h.run(&Ns::dad(a("2001:db8:1::77")).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&out[38..54], &a("ff02::1").octets());
    assert_eq!(
        na_body(&out, 14)[4],
        0x80,
        "Router set, Solicited and Override clear"
    );
    assert!(matches!(
        h.check(&Ns::dad(a("2001:db8:1::77")).frame()),
        Verdict::Answer(_)
    ));
    // A DAD probe must go to a solicited-node group and carry no source
    // link-layer address.
    let mut to_unicast = Ns::dad(a("2001:db8:1::77"));
    to_unicast.dst = a("2001:db8:1::77");
    assert_eq!(h.check(&to_unicast.frame()), Verdict::Invalid);
    let mut with_slla = Ns::dad(a("2001:db8:1::77"));
    with_slla.options = vec![1, 1, 2, 0, 0x5e, 0, 0x53, 1];
    assert_eq!(h.check(&with_slla.frame()), Verdict::Invalid);
}

#[test]
fn rejects_what_rfc_4861_says_to_discard() {
    let mut h = Harness::with_log_level("invalid", false, false, Some(Level::TRACE));
    let records = Records::default();
    let mut reader = h.responder.log_records(records.clone()).unwrap();
    let t = a("2001:db8:1::5");
    // What each breaks, and the reason its log record gives.
    let mut cases: Vec<(&str, &str, Ns)> = vec![
        (
            "hop limit 254",
            "hop limit not 255",
            Ns {
                hop_limit: 254,
                ..Ns::multicast(t)
            },
        ),
        (
            "hop limit 1",
            "hop limit not 255",
            Ns {
                hop_limit: 1,
                ..Ns::multicast(t)
            },
        ),
        (
            "bad checksum",
            "bad checksum",
            Ns {
                checksum_delta: 1,
                ..Ns::multicast(t)
            },
        ),
        (
            "code 1",
            "code not 0",
            Ns {
                code: 1,
                ..Ns::multicast(t)
            },
        ),
        (
            "zero-length option",
            "option of length 0",
            Ns {
                options: vec![1, 0, 0, 0, 0, 0, 0, 0],
                ..Ns::multicast(t)
            },
        ),
        (
            "option overruns the message",
            "last option overruns the message",
            Ns {
                options: vec![1, 2, 0, 0, 0, 0, 0, 0],
                ..Ns::multicast(t)
            },
        ),
        (
            "options not in 8-octet units",
            "length not 24 + a multiple of 8",
            Ns {
                options: vec![1, 1, 0, 0],
                ..Ns::multicast(t)
            },
        ),
        (
            "more options than walked",
            "more options than the program walks",
            Ns {
                options: vec![9, 33]
                    .into_iter()
                    .chain(std::iter::repeat_n(0, 262))
                    .collect(),
                ..Ns::multicast(t)
            },
        ),
    ];
    // A multicast target (answering would claim a group address).
    let mut multicast_target = Ns::unicast(a("ff02::1"));
    multicast_target.dst = a("ff02::1:ff00:1");
    cases.push(("multicast target", "multicast target", multicast_target));
    // A multicast source, and a frame from a group MAC: the answer would go
    // to a group, with our MAC.
    cases.push((
        "multicast source",
        "multicast source",
        Ns {
            src: a("ff02::1"),
            ..Ns::multicast(t)
        },
    ));
    cases.push((
        "group link-layer source",
        "link-layer source not unicast",
        Ns {
            eth_src: [0x33, 0x33, 0, 0, 0, 1],
            ..Ns::multicast(t)
        },
    ));
    for (what, _, ns) in &cases {
        assert_eq!(h.check(&ns.frame()), Verdict::Invalid, "{what}");
    }
    let c = h.counters();
    assert_eq!(c.invalid, cases.len() as u64 * h.runs_per_check());
    assert_eq!(c.answered, 0);
    reader.flush();
    let got: Vec<_> = records
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, message)| message.clone())
        .collect();
    let expected: Vec<_> = cases
        .iter()
        .flat_map(|(_, reason, ns)| {
            let message = format!(
                "invalid solicitation from {} left to the kernel: {reason}",
                ns.src
            );
            std::iter::repeat_n(message, h.runs_per_check() as usize)
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn every_truncation_of_a_valid_solicitation_is_passed_untouched() {
    let mut h = Harness::new("trunc", false, false);
    for ns in [
        Ns::multicast(a("2001:db8:1::5")),
        Ns {
            vlan: Some(7),
            ..Ns::multicast(a("2001:db8:1::5"))
        },
    ] {
        let frame = ns.frame();
        for len in 0..frame.len() {
            let v = h.check(&frame[..len]);
            assert!(!matches!(v, Verdict::Answer(_)), "length {len}");
        }
        assert!(matches!(h.check(&frame), Verdict::Answer(_)));
    }
}

#[test]
fn link_layer_padding_is_dropped_from_the_answer() {
    let mut h = Harness::new("pad", false, false);
    let ns = Ns {
        padding: 6,
        ..Ns::multicast(a("2001:db8:1::5"))
    };
    assert!(matches!(h.check(&ns.frame()), Verdict::Answer(_)));
}

#[test]
fn vlan_tag_is_kept() {
    let mut h = Harness::new("vlan", false, false);
    let ns = Ns {
        vlan: Some(0x2064),
        ..Ns::multicast(a("2001:db8:1::5"))
    };
    let (action, out) = h.run(&ns.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[12..18], &[0x81, 0x00, 0x20, 0x64, 0x86, 0xdd]);
    na_body(&out, 18);
    assert!(matches!(h.check(&ns.frame()), Verdict::Answer(_)));
}

#[test]
fn with_a_vlan_filter_only_that_vlan_is_answered() {
    let options = ResponderOptions {
        router: false,
        vlan: Some(7),
    };
    let mut h = Harness::with_options("vlanf", false, options, None);
    let ns = |tci| Ns {
        vlan: tci,
        ..Ns::multicast(a("2001:db8:1::5"))
    };
    // Untagged, another VLAN, and VLAN 7's id in another VLAN's bits.
    for tci in [None, Some(8), Some(0x0107), Some(0)] {
        let frame = ns(tci).frame();
        assert_eq!(h.check(&frame), Verdict::Ignored, "{tci:?}");
        assert_eq!(h.run(&frame), (XDP_PASS, frame.clone()), "{tci:?}");
    }
    assert_eq!(h.counters().seen, 0, "other VLANs' frames are not counted");
    // VLAN 7, whatever its priority bits; the tag is kept.
    let (action, out) = h.run(&ns(Some(0xa007)).frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[12..16], &[0x81, 0x00, 0xa0, 0x07]);
    assert!(matches!(h.check(&ns(Some(7)).frame()), Verdict::Answer(_)));
}

#[test]
fn solicitation_not_addressed_to_the_target_is_not_ours() {
    let mut h = Harness::new("addr", false, false);
    let mut ns = Ns::multicast(a("2001:db8:1::5"));
    ns.dst = a("ff02::1:ff00:6"); // another address's group
    assert_eq!(h.check(&ns.frame()), Verdict::NotOurs);
    ns.dst = a("2001:db8:1::6"); // unicast to someone else
    assert_eq!(h.check(&ns.frame()), Verdict::NotOurs);
}

#[test]
fn other_traffic_passes_uncounted() {
    let mut h = Harness::new("other", false, false);
    let ns = Ns::multicast(a("2001:db8:1::5")).frame();
    // IPv4.
    let mut ipv4 = ns.clone();
    ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
    // An extension header (hop-by-hop) before the ICMPv6 message.
    let mut ext = ns.clone();
    ext[20] = 0;
    // Other ICMPv6: an echo request and an advertisement.
    let mut echo = ns.clone();
    echo[54] = 128;
    let mut na = ns.clone();
    na[54] = 136;
    // IPv6 with another version number.
    let mut v4_in_v6 = ns.clone();
    v4_in_v6[14] = 0x40;
    for frame in [ipv4, ext, echo, na, v4_in_v6] {
        assert_eq!(h.check(&frame), Verdict::Ignored);
    }
    assert_eq!(h.counters(), Counters::default());
}

/// The program's log records, as the `log` crate hands them over.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<(log::Level, String, String)>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }

    fn flush(&self) {}
}

#[test]
fn only_the_rare_paths_log_and_only_at_the_level_asked() {
    let answered = Ns::multicast(a("2001:db8:1::abcd")).frame();
    let not_ours = Ns::multicast(a("2001:db8:3::1")).frame();
    let mut other = answered.clone();
    other[20] = 17;
    let dad = Ns::dad(a("2001:db8:1::77")).frame();
    let invalid = Ns {
        hop_limit: 254,
        ..Ns::multicast(a("2001:db8:1::5"))
    }
    .frame();
    let defended = (
        log::Level::Debug,
        "defended 2001:db8:1::77 against a duplicate address detection probe".to_owned(),
    );
    let rejected = (
        log::Level::Trace,
        format!("invalid solicitation from {ROUTER_IP} left to the kernel: hop limit not 255"),
    );
    for (i, (level, expected)) in [
        (None, vec![]),
        (Some(Level::INFO), vec![]),
        (Some(Level::DEBUG), vec![defended.clone()]),
        (Some(Level::TRACE), vec![defended, rejected]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = Harness::with_log_level(&format!("log{i}"), false, false, level);
        let records = Records::default();
        let mut reader = h.responder.log_records(records.clone()).unwrap();
        for frame in [&answered, &not_ours, &other, &dad, &invalid] {
            h.check(frame);
        }
        reader.flush();
        let got = records.0.lock().unwrap().clone();
        // Each frame ran through both entry points, XDP and TC.
        let expected: Vec<_> = expected
            .into_iter()
            .flat_map(|(level, message)| {
                let record = (level, broker_common::ndp::LOG_TARGET.to_owned(), message);
                [record.clone(), record]
            })
            .collect();
        assert_eq!(got, expected, "log level {level:?}");
    }
}

/// What the daemon does: `Responder::load` takes the level from the tracing
/// filter, and a thread of its own passes the records to the `log` crate's
/// logger (in the daemon, tracing-subscriber's bridge to its log).
#[test]
fn load_reads_the_records_into_the_log_when_the_filter_asks() {
    let records = Records::default();
    // The only test here that sets the process's `log` logger.
    log::set_boxed_logger(Box::new(records.clone())).unwrap();
    let pins = TestPins::new("log-reader");
    let filter = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,broker_ebpf=debug"))
        .finish();
    let mut responder =
        tracing::subscriber::with_default(filter, || Responder::load(&pins.dir)).unwrap();
    responder
        .configure_detached(LinkLayer::Ethernet(BROKER_MAC), ResponderOptions::default())
        .unwrap();
    responder
        .reconcile(&["2001:db8:1::/64".parse().unwrap()])
        .unwrap();
    let frame = Ns::dad(a("2001:db8:1::77")).frame();
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    let result = responder.program().unwrap().test_run(opts).unwrap();
    assert_eq!(result.return_value, XDP_TX);
    let expected = "defended 2001:db8:1::77 against a duplicate address detection probe";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !records.0.lock().unwrap().iter().any(|r| r.2 == expected) {
        assert!(
            std::time::Instant::now() < deadline,
            "no record came: {:?}",
            records.0.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Dropping the responder stops its reader.
    drop(responder);
}

/// A disabled log call costs nothing: the level is a constant to the
/// verifier, which removes the calls it disables from the program.
#[test]
fn log_calls_that_are_off_are_removed_from_the_program() {
    let size = |tag, level| {
        let mut h = Harness::with_log_level(tag, false, false, level);
        let info = h.responder.program().unwrap().info().unwrap();
        info.size_translated().expect("the kernel reports the size")
    };
    let off = size("size-off", None);
    let debug = size("size-debug", Some(Level::DEBUG));
    let trace = size("size-trace", Some(Level::TRACE));
    assert!(off < debug && debug < trace, "{off} < {debug} < {trace}");
}

#[test]
fn l3_device_answers_without_link_layer_option() {
    let mut h = Harness::new("l3", false, true);
    let ns = Ns {
        l3: true,
        options: Vec::new(),
        ..Ns::multicast(a("2001:db8:1::5"))
    };
    let (action, out) = h.run(&ns.frame());
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), 40 + 24, "no option on an L3 device");
    assert_eq!(na_body(&out, 0)[4], 0x40);
    assert!(matches!(h.check(&ns.frame()), Verdict::Answer(_)));
    // With the source link-layer option a router might still send: shrinks.
    let ns = Ns {
        l3: true,
        ..Ns::multicast(a("2001:db8:1::5"))
    };
    assert!(matches!(h.check(&ns.frame()), Verdict::Answer(_)));
}

#[test]
fn removed_prefix_is_no_longer_answered() {
    let mut h = Harness::new("remove", false, false);
    let frame = Ns::multicast(a("2001:db8:2::150")).frame();
    assert!(matches!(h.check(&frame), Verdict::Answer(_)));
    assert!(
        h.responder
            .remove("2001:db8:2::100/120".parse().unwrap())
            .unwrap()
    );
    h.model.prefixes.retain(|p| p.prefix_len() != 120);
    assert_eq!(h.check(&frame), Verdict::NotOurs);
    // Its length left the program's list with its last prefix.
    assert!(!h.responder.lengths().unwrap().contains(&120));
}

#[test]
fn unconfigured_program_passes_everything() {
    let pins = TestPins::new("unconf");
    let mut responder = Responder::load(&pins.dir).unwrap();
    responder
        .reconcile(&["2001:db8:1::/64".parse().unwrap()])
        .unwrap();
    let frame = Ns::multicast(a("2001:db8:1::5")).frame();
    let mut out = vec![0u8; 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    let r = responder.program().unwrap().test_run(opts).unwrap();
    assert_eq!(r.return_value, XDP_PASS);
}

/// 100,000 frames: valid solicitations of every kind, then mutated (bytes
/// flipped, cut, extended, fields set to edge values). The program must do
/// exactly what the model says: never answer a target outside the map, never
/// emit a malformed advertisement, never touch a frame it passes.
#[test]
fn agrees_with_the_model_on_100000_random_and_mutated_frames() {
    const FRAMES: usize = 100_000;
    let seed = std::env::var("NDP_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e64_7072_6f78);
    eprintln!("seed {seed} (set NDP_PROPTEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut eth = Harness::new("prop", false, false);
    let mut l3 = Harness::new("propl3", true, true);
    let options = ResponderOptions {
        router: false,
        vlan: Some(7),
    };
    let mut vlan = Harness::with_options("propvlan", false, options, None);
    let mut answers = 0;
    for i in 0..FRAMES {
        let use_l3 = i % 5 == 0;
        let use_vlan = i % 5 == 1;
        let mut ns = random_solicitation(&mut rng);
        ns.l3 = use_l3;
        if use_vlan && rng.random_bool(0.6) {
            // VLAN 7 or a neighbour of it, with random priority bits.
            let id = [7, 6, 8, 0x107][rng.random_range(0..4)];
            ns.vlan = Some(rng.random::<u16>() & 0xf000 | id);
        }
        let mut frame = ns.frame();
        if rng.random_bool(0.7) {
            mutate(&mut rng, &mut frame);
        }
        let h = match (use_l3, use_vlan) {
            (true, _) => &mut l3,
            (_, true) => &mut vlan,
            _ => &mut eth,
        };
        if matches!(h.check(&frame), Verdict::Answer(_)) {
            answers += 1;
        }
    }
    // The generator must actually reach both sides of the decision.
    assert!(answers > FRAMES / 10, "only {answers} answers");
    assert!(answers < FRAMES * 9 / 10, "{answers} answers");
    assert!(vlan.counters().answered > 0, "VLAN 7 never answered");
    for h in [&eth, &l3, &vlan] {
        let c = h.counters();
        assert_eq!(c.seen, c.answered + c.not_ours + c.invalid + c.failed);
        assert_eq!(c.failed, 0);
    }
}

fn random_target(rng: &mut StdRng) -> Ipv6Addr {
    let base: u128 = match rng.random_range(0..5) {
        0 => a("2001:db8:1::").into(),
        1 => a("2001:db8:2::100").into(),
        2 => a("fd00:5::").into(),
        3 => a("2001:db8:2::").into(),
        _ => rng.random(),
    };
    let host_bits = [128u32, 64, 8, 80][rng.random_range(0..4)];
    let noise: u128 = rng.random::<u128>() & (u128::MAX >> (128 - host_bits.min(127)));
    Ipv6Addr::from(
        base | if rng.random_bool(0.8) {
            noise & 0xffff_ffff_ffff_ffff
        } else {
            noise
        },
    )
}

fn random_solicitation(rng: &mut StdRng) -> Ns {
    let target = random_target(rng);
    let mut ns = match rng.random_range(0..4) {
        0 | 1 => Ns::multicast(target),
        2 => Ns::unicast(target),
        _ => Ns::dad(target),
    };
    if rng.random_bool(0.2) {
        ns.vlan = Some(rng.random_range(0..4096));
    }
    if rng.random_bool(0.1) {
        ns.padding = rng.random_range(1..20);
    }
    if rng.random_bool(0.1) {
        // Extra options of random types and lengths.
        for _ in 0..rng.random_range(1..4) {
            let units = rng.random_range(1..3u8);
            ns.options.push(rng.random_range(3..40));
            ns.options.push(units);
            ns.options
                .extend((0..usize::from(units) * 8 - 2).map(|_| rng.random::<u8>()));
        }
    }
    ns
}

fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..6) {
            0 if !frame.is_empty() => {
                let i = rng.random_range(0..frame.len());
                frame[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !frame.is_empty() => {
                let i = rng.random_range(0..frame.len());
                frame[i] = rng.random();
            }
            2 => frame.truncate(rng.random_range(0..=frame.len())),
            3 => frame.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
            // Fields that decide the outcome, set to edge values.
            4 if frame.len() > 60 => {
                let i = [20usize, 21, 18, 19, 54, 55][rng.random_range(0..6)];
                frame[i] = [0, 1, 0x7f, 0x80, 0xfe, 0xff][rng.random_range(0..6)];
            }
            _ if frame.len() > 80 => {
                // Option length byte.
                let i = 54 + 24 + 1;
                frame[i] = rng.random_range(0..4);
            }
            _ => {}
        }
    }
}
