//! Sticky routing: the home node of a user by rendezvous (highest random weight) hashing.
//!
//! Every node computes the same answer from the same list of live nodes, and when a node
//! leaves only its own users move.

use presence::NodeInfo;

/// FNV-1a over `parts`, then a splitmix64 finalizer: stable across builds and platforms.
fn weight(node_id: &str, user: &str) -> u64 {
    let mut h = fanout::util::fnv1a(node_id.bytes().chain([0xff]).chain(user.bytes()));
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node that `user` should connect to, among `nodes`: the highest weight among those
/// with room (a full node's users go to their next choice, and come back when it has room
/// again), or among all when every node is full.
pub fn home_node<'a>(user: &str, nodes: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
    let pick = |room: bool| {
        nodes
            .iter()
            .filter(|n| !room || !n.is_full())
            .max_by_key(|n| (weight(&n.id, user), n.id.as_str()))
    };
    pick(true).or_else(|| pick(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeInfo> {
        (0..n)
            .map(|i| NodeInfo {
                id: format!("node-{i}"),
                url: format!("ws://10.0.0.{i}/ws"),
                connections: 0,
                capacity: 10,
            })
            .collect()
    }

    #[test]
    fn spreads_users_and_moves_only_the_lost_nodes_users() {
        let three = nodes(3);
        let mut counts = [0usize; 3];
        let users: Vec<String> = (0..3000).map(|i| format!("user{i}")).collect();
        for u in &users {
            let home = home_node(u, &three).unwrap();
            counts[three.iter().position(|n| n.id == home.id).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let two = &three[..2];
        for u in &users {
            let before = home_node(u, &three).unwrap();
            if before.id != "node-2" {
                assert_eq!(home_node(u, two).unwrap().id, before.id);
            }
        }
        assert!(home_node("x", &[]).is_none());
    }

    #[test]
    fn a_full_nodes_users_go_to_their_next_choice() {
        let mut three = nodes(3);
        let users: Vec<String> = (0..300).map(|i| format!("user{i}")).collect();
        let before: Vec<String> = users
            .iter()
            .map(|u| home_node(u, &three).unwrap().id.clone())
            .collect();
        three[1].connections = 10;
        for (u, was) in users.iter().zip(&before) {
            let now = &home_node(u, &three).unwrap().id;
            if was == "node-1" {
                assert_ne!(now, "node-1");
            } else {
                assert_eq!(now, was, "only the full node's users move");
            }
        }
        for n in three.iter_mut() {
            n.connections = 10;
        }
        assert_eq!(home_node("user1", &three).unwrap().id, before[1]);
    }
}
