//! Envelopes from Redis pub/sub (another node, or anything that can SPUBLISH to the prefix):
//! decoding never panics, and a publication that decodes re-encodes to bytes that decode to
//! the same publication (`check_envelope` panics otherwise).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Err` is a well-handled bad envelope; the property failures panic inside.
    if let Err(reason) = fanout::redis::check_envelope(data) {
        assert!(!reason.is_empty(), "a decode error says why");
    }
});
