//! Real network faults on loopback: packets to and from one TCP port dropped by the kernel
//! (iptables `DROP` rules in the `INPUT` chain), so that a connection through that port sees
//! neither data nor a reset, as when a network partition or a firewall swallows the traffic.
//! Put a [`crate::TcpProxy`] on the path to fault one process's link alone (every process on
//! the machine shares loopback).
//!
//! Needs root and the `iptables` command (`./scripts/test` installs it); [`available`] says
//! whether this machine has both.

use std::process::Command;

/// Whether iptables rules can be set here (root, and `iptables -S` answers).
pub fn available() -> bool {
    Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Both directions of `port` dropped until this is dropped (the rules are then removed).
#[derive(Debug)]
pub struct PortBlackHole {
    rules: Vec<Vec<String>>,
}

impl PortBlackHole {
    /// Drops every TCP packet to or from `port` on this machine. Panics when the rules
    /// cannot be set (see [`available`]).
    pub fn new(port: u16) -> PortBlackHole {
        let tag = format!("gateway-e2e-{}", std::process::id());
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|side| {
                [
                    "INPUT",
                    "-p",
                    "tcp",
                    side,
                    &port.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    &tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .collect();
        for rule in &rules {
            iptables("-I", rule);
        }
        PortBlackHole { rules }
    }

    /// Packets the rules dropped so far (both directions), from `iptables -L -v -x`.
    pub fn dropped_packets(&self) -> u64 {
        let out = Command::new("iptables")
            .args(["-w", "-L", "INPUT", "-v", "-x", "-n"])
            .output()
            .expect("iptables -L");
        let tag = &self.rules[0][8];
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(tag.as_str()) && l.contains(&self.port_match()))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    fn port_match(&self) -> String {
        // `iptables -L` shows the port as `dpt:<port>` / `spt:<port>`.
        format!("pt:{}", self.rules[0][4])
    }
}

fn iptables(action: &str, rule: &[String]) {
    let status = Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .status()
        .expect("running iptables");
    assert!(
        status.success(),
        "iptables {action} {rule:?} failed: {status}"
    );
}

impl Drop for PortBlackHole {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables")
                .arg("-w")
                .arg("-D")
                .args(rule)
                .status();
        }
    }
}
