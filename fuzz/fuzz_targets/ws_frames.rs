//! Client frames after the upgrade, read by tungstenite in the server role with the gateway's
//! limits (frame and message size, read buffer); every message it yields goes to the command
//! decoder of its encoding. Two inputs per run:
//! - the raw bytes as they are (anything a client may send: never a panic);
//! - the bytes shaped into well-formed masked frames (opcode, FIN and payload from the
//!   input), followed by one `ping` command: when tungstenite accepts the whole sequence (no
//!   protocol error, no close), that last command must come out whole and decode, whatever
//!   came before it (nothing earlier leaves the connection unable to take commands).
#![no_main]

use gateway::protocol::{Encoding, Op, decode};
use libfuzzer_sys::fuzz_target;
use std::io::{Cursor, Read, Write};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

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

fn server(bytes: Vec<u8>) -> WebSocket<Stream> {
    // The gateway's defaults: 64 KiB frames and messages, a 512-byte read buffer.
    let mut config = WebSocketConfig::default();
    config.max_frame_size = Some(64 * 1024);
    config.max_message_size = Some(64 * 1024);
    config.read_buffer_size = 512;
    WebSocket::from_raw_socket(Stream(Cursor::new(bytes)), Role::Server, Some(config))
}

/// One client frame (masked, as clients must), written by tungstenite's own encoder.
fn frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    let mut frame = Frame::message(payload.to_vec(), OpCode::from(opcode), fin);
    frame.header_mut().mask = Some([0x37, 0xfa, 0x21, 0x3d]);
    frame.format(out).expect("writing to a Vec");
}

/// Well-formed frames from `data`: each takes a header byte (FIN, opcode among continuation,
/// text, binary, ping and pong), a length byte and that many payload bytes (under 126).
fn shaped(data: &[u8]) -> Vec<u8> {
    const OPCODES: [u8; 5] = [0x0, 0x1, 0x2, 0x9, 0xa];
    let mut out = Vec::new();
    let mut rest = data;
    while let [head, len, tail @ ..] = rest {
        let opcode = OPCODES[(*head & 0x0f) as usize % OPCODES.len()];
        // Control frames are never fragmented.
        let fin = *head & 0x80 != 0 || opcode >= 0x8;
        let n = (*len as usize % 126).min(tail.len());
        frame(&mut out, fin, opcode, &tail[..n]);
        rest = &tail[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut ws = server(data.to_vec());
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

    let mut bytes = shaped(data);
    let ping = br#"{"id":7,"op":"ping"}"#;
    frame(&mut bytes, true, 0x1, ping);
    let mut ws = server(bytes);
    let mut last = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => last = Some(t.as_bytes().to_vec()),
            Ok(Message::Binary(b)) => last = Some(b.to_vec()),
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                break;
            }
            // A protocol error (a data frame inside a fragmented message, invalid UTF-8 in
            // text): the sequence was refused, the connection ends.
            Err(_) => return,
        }
    }
    let last = last.expect("the sequence was accepted, so its last command came out");
    assert_eq!(last, ping, "the last message is the ping command, whole");
    let command = decode(Encoding::Json, &last).expect("the ping command decodes");
    assert_eq!((command.id, command.op), (7, Op::Ping));
});
