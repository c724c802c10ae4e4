//! Client commands in either encoding (the first byte picks it): decoding never panics, and a
//! published payload always converts to the other encoding, within the depth limit.
#![no_main]

use fanout::Payload;
use gateway::protocol::{Encoding, MAX_DATA_DEPTH, Op, decode, json_text_depth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let encoding = if selector & 1 == 0 {
        Encoding::Json
    } else {
        Encoding::MsgPack
    };
    let Ok(command) = decode(encoding, frame) else {
        return;
    };
    if let Op::Publish { data, .. } = command.op {
        // Every subscriber can receive it, whatever its encoding.
        let json = data
            .to_json()
            .expect("an accepted payload converts to JSON");
        let packed = data
            .to_msgpack()
            .expect("an accepted payload converts to MessagePack");
        assert!(json_text_depth(&json) <= MAX_DATA_DEPTH);
        let back = Payload::MsgPack(packed)
            .to_value()
            .expect("MessagePack reads back");
        let direct = Payload::Json(json).to_value().expect("JSON reads back");
        assert_eq!(back, direct);
    }
});
