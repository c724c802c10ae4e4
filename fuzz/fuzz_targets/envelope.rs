//! Envelopes from Redis pub/sub (another node, or anything that can PUBLISH to the prefix):
//! decoding never panics, and a publication re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fanout::redis::check_envelope(data);
});
