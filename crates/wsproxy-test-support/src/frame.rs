//! WebSocket frames by hand, for tests that must see or send exactly the
//! bytes on the wire (RFC 6455 §5.2).

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::time::within;

/// Encode one WebSocket frame; `mask` as a client must.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame as read by [`read_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Whether it was masked.
    pub masked: bool,
    /// Payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Read one frame from `stream`, after the bytes in `buf` (which keeps
/// what was read past the frame). `None` at a clean end of stream.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    let mut chunk = [0u8; 65536];
    within("a frame", async {
        loop {
            if let Some((frame, len)) = parse_frame(buf) {
                buf.drain(..len);
                return Some(frame);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    assert!(buf.is_empty(), "stream ended inside a frame: {buf:?}");
                    return None;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// Parse one whole frame at the start of `bytes`, and its length.
pub fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let masked = bytes[1] & 0x80 != 0;
    let (len, mut at) = match bytes[1] & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key: Option<[u8; 4]> = if masked {
        let key = bytes.get(at..at + 4)?.try_into().unwrap();
        at += 4;
        Some(key)
    } else {
        None
    };
    let payload = bytes.get(at..at + len)?;
    let payload = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key.map_or(0, |k| k[i % 4]))
        .collect();
    Some((
        Frame {
            fin: bytes[0] & 0x80 != 0,
            opcode: bytes[0] & 0x0f,
            masked,
            payload,
        },
        at + len,
    ))
}
