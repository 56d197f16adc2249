//! Whole-system runs in virtual time: determinism, failover without
//! stalls, placement of a slow uplink, signaling through the Manager.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use miostream_protocol::TopologyKind;
use miostream_sim::{run, HostParams, SimConfig, SimOutcome};

fn quiet(config: &SimConfig) -> SimOutcome {
    run(config, &mut |_| {}).unwrap()
}

fn short(receivers: usize, topology: TopologyKind, seed: u64) -> SimConfig {
    SimConfig {
        duration: Duration::from_secs(10),
        ..SimConfig::lan(receivers, topology, seed)
    }
}

#[test]
fn the_same_seed_gives_the_same_outcome_and_another_seed_another() {
    let mut config = short(12, TopologyKind::Tree, 7);
    config.failures_per_sec = 0.5;
    for r in &mut config.receivers {
        r.loss = 0.01;
        r.jitter = Duration::from_millis(2);
    }
    let a = quiet(&config);
    let b = quiet(&config);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.failures > 0, "{a:?}");
    config.seed = 8;
    let c = quiet(&config);
    assert_ne!(format!("{a:?}"), format!("{c:?}"));
}

/// 30 receivers on a LAN; one relay (a receiver that feeds others) is
/// killed mid-stream: every other receiver keeps playing without a stall.
fn relay_killed(topology: TopologyKind) {
    let mut config = short(30, topology, 3);
    config.kill_relay_at = Some(Duration::from_secs(4));
    let out = quiet(&config);
    assert_eq!(out.failures, 1, "{topology:?}");
    for (slot, r) in out.receivers.iter().enumerate() {
        assert!(r.playing, "{topology:?} slot {slot} does not play: {r:?}");
        if r.incarnations == 1 {
            assert_eq!(
                (r.stalls, r.chunks_lost),
                (0, 0),
                "{topology:?} slot {slot}: {r:?}"
            );
            assert!(r.played_ms >= 9_000, "{topology:?} slot {slot}: {r:?}");
        }
    }
}

#[test]
fn survivors_of_a_killed_relay_play_without_stalls_in_a_tree() {
    relay_killed(TopologyKind::Tree);
}

#[test]
fn survivors_of_a_killed_relay_play_without_stalls_in_a_list() {
    relay_killed(TopologyKind::List);
}

#[test]
fn survivors_of_a_killed_relay_play_without_stalls_in_a_mesh() {
    relay_killed(TopologyKind::Mesh);
}

#[test]
fn a_slow_uplink_ends_up_a_leaf() {
    let mut config = short(8, TopologyKind::Tree, 5);
    // The first to join would be the broadcaster's child and a relay.
    config.receivers[0] = HostParams {
        uplink_bps: Some(2_000_000),
        ..HostParams::wired("wifi")
    };
    let out = quiet(&config);
    let slow = &out.receivers[0];
    assert!(slow.playing, "{slow:?}");
    assert_eq!(slow.feeds, 0, "the slow uplink feeds nobody: {slow:?}");
    assert_eq!(slow.stalls, 0, "{slow:?}");
    assert!(out.receivers.iter().any(|r| r.feeds > 0));
}

#[test]
fn signaling_goes_through_the_manager_and_a_refused_offer_is_retried() {
    let mut config = short(6, TopologyKind::Tree, 11);
    config.misroute_offers = 3;
    let out = quiet(&config);
    assert_eq!(out.signals_refused, 3, "{out:?}");
    // Every link came up through offers and answers the Manager relayed.
    assert!(out.signals_relayed >= 2 * out.links_up, "{out:?}");
    assert!(out.receivers.iter().all(|r| r.playing), "{out:?}");
}
