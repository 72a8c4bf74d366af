//! The NDP responder's packet code (broker-ebpf: `solicitation`, `validate`,
//! `advertise`, run on the host by `broker_ebpf::host::respond`) against
//! broker-lab's reference model of RFC 4861 §7.1.1 (`ndp_frames::Model`,
//! written independently of the eBPF code): for every frame the two agree on
//! ignoring it, refusing it, declining it, or on the exact advertisement.
//! Any host on the upstream link can send any frame. The address sanitizer
//! sees any read past the frame or through a pointer the resize made stale.
//!
//! The first byte sets the configuration: bit 0 an L3 device (no Ethernet
//! header), bit 1 the Router flag, bit 2 a VLAN filter (VLAN 7); the rest
//! is the frame.
#![no_main]

use broker_common::ndp::{FLAG_CONFIGURED, FLAG_L3_DEVICE, FLAG_ROUTER, NdpConfig, VLAN_FILTER_ON};
use broker_ebpf::host::{self, Verdict};
use broker_lab::ndp_frames::{self, BROKER_MAC, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, frame)) = data.split_first() else {
        return;
    };
    let model = Model {
        prefixes: vec![
            "2001:db8:1::/64".parse().unwrap(),
            "2001:db8:2::100/120".parse().unwrap(),
        ],
        mac: BROKER_MAC,
        router: flags & 2 != 0,
        l3: flags & 1 != 0,
        vlan: (flags & 4 != 0).then_some(7),
    };
    let vlan_filter = model.vlan.map_or(0, |id| VLAN_FILTER_ON | u32::from(id));
    let mut cfg = NdpConfig {
        mac: BROKER_MAC,
        flags: FLAG_CONFIGURED,
        ..NdpConfig::default()
    };
    if model.l3 {
        cfg.flags |= FLAG_L3_DEVICE;
    }
    if model.router {
        cfg.flags |= FLAG_ROUTER;
    }
    let in_map = |target: &[u8; 16]| {
        let target = std::net::Ipv6Addr::from(*target);
        model.prefixes.iter().any(|p| p.contains(&target))
    };
    let program = host::respond(frame, &cfg, vlan_filter, in_map);
    let expected = model.verdict(frame);
    match (&program, &expected) {
        (Verdict::Ignored, ndp_frames::Verdict::Ignored)
        | (Verdict::Invalid(_), ndp_frames::Verdict::Invalid)
        | (Verdict::NotOurs, ndp_frames::Verdict::NotOurs) => {}
        (Verdict::Answer(got), ndp_frames::Verdict::Answer(want)) => {
            assert_eq!(got, want, "the advertisement differs from the model's")
        }
        _ => panic!("the program says {program:?}, the model {expected:?}"),
    }
});
