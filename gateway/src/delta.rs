//! Fossil deltas for subscriptions that ask for them (Centrifugo's `delta: "fossil"`, in
//! namespaces with `allowed_delta_types = ["fossil"]`): an app that publishes the same big
//! document again and again with small changes sends each subscriber only the difference.
//!
//! Each publication of such a channel is delivered with the channel's previous one (`Hub`
//! keeps it, per channel); the delta between their payloads (JSON text) is computed once per
//! publication on this node, on first use, and shared by every subscriber and both encodings
//! (`Delivery`). A subscriber gets it only when the publication before it on the wire was
//! that previous one; otherwise, and for the first publication after a subscribe, it gets the
//! whole payload. Recovery and history send whole payloads.
//!
//! The delta format is Fossil's (what centrifuge-js applies), made by the `fossil-delta`
//! crate: a port of Fossil's own encoder, whose output is byte for byte Fossil's on its
//! reference files. `fossil-delta` is not maintained, so `tests` below round-trip it under
//! proptest, including the UTF-8 boundary case JSON clients depend on.

/// The delta turning `prev` into `next` when it is worth sending: `None` when it is not
/// smaller than `next` itself.
pub fn fossil(prev: &[u8], next: &[u8]) -> Option<Vec<u8>> {
    // The crate takes (target, source).
    let delta = fossil_delta::delta(next, prev);
    (delta.len() < next.len()).then_some(delta)
}

/// Whether a delta can travel as a JSON string: centrifuge-js reads `data` as a string and
/// applies the delta to the UTF-8 bytes of that string, so the delta's bytes must be UTF-8
/// themselves (a copy that ends inside a multi-byte character would not be).
pub fn is_text(delta: &[u8]) -> bool {
    std::str::from_utf8(delta).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_small_change_to_a_big_document_is_a_small_delta() {
        let doc = |n: u32| {
            let rows: Vec<String> = (0..400)
                .map(|i| {
                    format!(
                        "{{\"row\":{i},\"name\":\"item number {i}\",\"price\":{}}}",
                        i * 3
                    )
                })
                .collect();
            format!("{{\"version\":{n},\"rows\":[{}]}}", rows.join(","))
        };
        let (a, b) = (doc(1), doc(2));
        assert!(a.len() > 15_000);
        let d = fossil(a.as_bytes(), b.as_bytes()).expect("smaller");
        assert!(d.len() < 100, "{} bytes", d.len());
        assert!(is_text(&d));
        assert_eq!(fossil_delta::apply(a.as_bytes(), &d).unwrap(), b.as_bytes());
    }

    #[test]
    fn nothing_in_common_is_no_delta() {
        assert_eq!(fossil(b"{\"a\":1}", b"[2]"), None);
        assert_eq!(fossil(b"", b"{}"), None);
    }

    #[test]
    fn a_delta_may_split_a_character_and_then_is_not_text() {
        // A copy of the shared prefix that ends in the first byte of "é"/"è" (C3 A9 / C3 A8),
        // then the second byte as a literal.
        let prev = format!("{{\"text\":\"{}é\"}}", "x".repeat(64));
        let next = format!("{{\"text\":\"{}è\"}}", "x".repeat(64));
        let d = fossil(prev.as_bytes(), next.as_bytes()).expect("smaller");
        assert_eq!(
            fossil_delta::apply(prev.as_bytes(), &d).unwrap(),
            next.as_bytes()
        );
        assert!(!is_text(&d), "{:?}", String::from_utf8_lossy(&d));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the payloads, a delta applies back to the new one.
        #[test]
        fn deltas_apply_back(prev in proptest::collection::vec(any::<u8>(), 0..300),
                             edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..8),
                             tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut next = prev.clone();
            for (at, byte) in edits {
                if !next.is_empty() {
                    let i = usize::from(at) % next.len();
                    next[i] = byte;
                }
            }
            next.extend(tail);
            if let Some(d) = fossil(&prev, &next) {
                prop_assert!(d.len() < next.len());
                prop_assert_eq!(fossil_delta::apply(&prev, &d).unwrap(), next);
            }
        }

        #[test]
        fn unrelated_payloads_apply_back(prev in proptest::collection::vec(any::<u8>(), 0..200),
                                         next in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(d) = fossil(&prev, &next) {
                prop_assert_eq!(fossil_delta::apply(&prev, &d).unwrap(), next);
            }
        }
    }
}
