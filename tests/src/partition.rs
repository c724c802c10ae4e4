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
    port: u16,
    /// The rules' comment: this test process's rules, told apart from any other.
    tag: String,
}

impl PortBlackHole {
    /// Drops every TCP packet to or from `port` on this machine. Panics when the rules
    /// cannot be set (see [`available`]).
    pub fn new(port: u16) -> PortBlackHole {
        let hole = PortBlackHole {
            port,
            tag: format!("gateway-e2e-{}", std::process::id()),
        };
        for rule in hole.rules() {
            iptables("-I", &rule);
        }
        hole
    }

    /// The two rules: packets to the port, packets from it.
    fn rules(&self) -> [Vec<String>; 2] {
        ["--dport", "--sport"].map(|side| {
            let port = self.port.to_string();
            [
                "INPUT",
                "-p",
                "tcp",
                side,
                &port,
                "-m",
                "comment",
                "--comment",
                &self.tag,
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec()
        })
    }

    /// Packets the rules dropped so far (both directions), from `iptables -L -v -x`, where a
    /// rule shows its port as `dpt:<port>` or `spt:<port>`.
    pub fn dropped_packets(&self) -> u64 {
        let out = Command::new("iptables")
            .args(["-w", "-L", "INPUT", "-v", "-x", "-n"])
            .output()
            .expect("iptables -L");
        let ports = [format!("dpt:{}", self.port), format!("spt:{}", self.port)];
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.contains(&self.tag) && l.split_whitespace().any(|w| ports.iter().any(|p| p == w))
            })
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
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
        for rule in self.rules() {
            let _ = Command::new("iptables")
                .arg("-w")
                .arg("-D")
                .args(&rule)
                .status();
        }
    }
}
