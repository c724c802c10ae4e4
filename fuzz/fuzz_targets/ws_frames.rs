//! Raw bytes from a client after the upgrade, read by tungstenite in the server role with the
//! gateway's limits (frame and message size, read buffer); every message it yields goes to
//! the command decoder of its encoding.
#![no_main]

use gateway::protocol::{Encoding, decode};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read, Write};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// The client's bytes to read; what the server writes is dropped.
struct Stream(Cursor<Vec<u8>>);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The gateway's defaults: 64 KiB frames and messages, a 512-byte read buffer.
    let mut config = WebSocketConfig::default();
    config.max_frame_size = Some(64 * 1024);
    config.max_message_size = Some(64 * 1024);
    config.read_buffer_size = 512;
    let mut ws = WebSocket::from_raw_socket(
        Stream(Cursor::new(data.to_vec())),
        Role::Server,
        Some(config),
    );
    for _ in 0..64 {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let _ = decode(Encoding::Json, t.as_bytes());
            }
            Ok(Message::Binary(b)) => {
                let _ = decode(Encoding::MsgPack, &b);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
});
