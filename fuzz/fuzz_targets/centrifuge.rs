//! Centrifugo protocol frames, each input read in both encodings (newline-separated JSON
//! commands, and varint-delimited Protobuf commands): decoding never panics, never yields
//! more commands than the batch bound, and a published payload is one JSON value within the
//! depth limit that converts to MessagePack for v1 subscribers.
#![no_main]

use gateway::protocol::centrifuge::{Inbound, MAX_BATCH, decode_frame};
use gateway::protocol::{Encoding, MAX_DATA_DEPTH, Op, json_text_depth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::CentrifugeJson, Encoding::CentrifugeProtobuf] {
        check(encoding, data);
    }
});

fn check(encoding: Encoding, data: &[u8]) {
    let mut out = Vec::new();
    if decode_frame(encoding, data, &mut out).is_err() {
        return;
    }
    assert!(!out.is_empty() && out.len() <= MAX_BATCH);
    for inbound in out {
        let Ok(Inbound::Command(command)) = inbound else {
            continue;
        };
        assert!(command.id > 0 || command.op == Op::Send);
        if let Op::Publish { data, .. } = command.op {
            let json = data.to_json().expect("an accepted payload is JSON");
            assert!(json_text_depth(&json) <= MAX_DATA_DEPTH);
            data.to_msgpack()
                .expect("an accepted payload converts to MessagePack");
        }
    }
}
