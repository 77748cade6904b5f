//! The WebSocket frame codec of the relay (RFC 6455 §5.2): track frame
//! boundaries in a byte stream without decoding payloads, and write the
//! proxy's own control frames (Ping, Close with its codes).
//!
//! The relay feeds every chunk it forwards to a [`FrameTracker`]. The
//! tracker reads frame headers only and skips payloads by length, so it
//! costs a few instructions per frame however large the payload, and it
//! never changes a byte. The one payload it looks into is a Close frame's
//! status code (the first two bytes, unmasked on the fly).
//!
//! It knows where the next frame starts and whether a fragmented message
//! is open, which is what a proxy needs to speak for itself at a frame
//! boundary, and it counts frames and messages. It never panics: any byte
//! stream is some sequence of (possibly nonsensical) frame headers.

/// Counters and position of one direction of a tunnel.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTracker {
    /// Header bytes of the frame being read.
    header: [u8; 14],
    /// How many of `header` are filled.
    have: u8,
    /// Payload bytes left in the current frame (0 between frames).
    remaining: u64,
    /// Payload bytes of the current frame seen so far.
    offset: u64,
    /// Opcode of the current frame.
    opcode: u8,
    /// Header length of the current frame.
    header_len: u8,
    /// Payload length of the current frame.
    len: u64,
    /// Payload bytes of the data message in progress, all fragments so far.
    message_len: u64,
    /// Masking key of the current frame, if masked.
    mask: Option<[u8; 4]>,
    /// A data message was started with FIN clear and is not finished.
    fragmented: bool,
    /// Close code bytes captured so far.
    close: [u8; 2],
    /// Frames whose header was read.
    pub(crate) frames: u64,
    /// Complete data messages (text or binary, fragmented or not).
    pub(crate) messages: u64,
    /// Status code of the first Close frame with one.
    pub(crate) close_code: Option<u16>,
    /// Complete Close frames seen.
    pub(crate) closes: u32,
}

/// The header of the frame that just started, as read by
/// [`FrameTracker::feed_to_header`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) opcode: u8,
    /// Header length in bytes (2 to 14).
    pub(crate) header_len: usize,
    /// Payload length.
    pub(crate) len: u64,
    /// Payload bytes of the message this frame belongs to, this frame
    /// included (0 for control frames).
    pub(crate) message_len: u64,
    pub(crate) mask: Option<[u8; 4]>,
}

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

impl FrameTracker {
    /// Observe `data`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.scan::<false>(data);
    }

    /// Observe `data` up to the end of the next complete frame header (the
    /// frame's payload is not consumed) and return how many bytes were
    /// consumed and that header, or all of `data` and `None`.
    pub(crate) fn feed_to_header(&mut self, data: &[u8]) -> (usize, Option<Head>) {
        let (consumed, header) = self.scan::<true>(data);
        (consumed, header.then(|| self.head()))
    }

    /// The header of the current (or last) frame.
    fn head(&self) -> Head {
        Head {
            opcode: self.opcode,
            header_len: usize::from(self.header_len),
            len: self.len,
            message_len: if self.opcode & 0x8 == 0 {
                self.message_len
            } else {
                0
            },
            mask: self.mask,
        }
    }

    /// Undo the start of the current control frame, whose header was just
    /// read and none of whose payload was consumed: the stream is back
    /// before its first byte (used to hold a frame back until it is whole).
    pub(crate) fn unread_control_frame(&mut self) {
        debug_assert!(self.opcode & 0x8 != 0 && self.offset == 0);
        self.have = 0;
        self.remaining = 0;
        self.frames -= 1;
    }

    /// Forget a partial header at the end of what was fed, returning its
    /// bytes: the caller feeds them again, in front of what follows.
    pub(crate) fn take_partial_header(&mut self) -> Option<([u8; 14], usize)> {
        if self.have == 0 {
            return None;
        }
        let have = usize::from(self.have);
        self.have = 0;
        Some((self.header, have))
    }

    /// Bytes of a frame header read so far (0 unless inside a header).
    pub(crate) fn partial_header_len(&self) -> usize {
        usize::from(self.have)
    }

    /// Between two frames: a control frame may be inserted here.
    pub(crate) fn at_frame_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Shared loop of [`feed`](Self::feed) and
    /// [`feed_to_header`](Self::feed_to_header); `STOP` stops after a
    /// header.
    #[inline]
    fn scan<const STOP: bool>(&mut self, mut data: &[u8]) -> (usize, bool) {
        let total = data.len();
        while !data.is_empty() {
            if self.remaining > 0 {
                let take =
                    usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                if self.opcode == OP_CLOSE && self.offset < 2 {
                    // The status code: the first two payload bytes.
                    let start = self.offset as usize;
                    for (i, &byte) in (start..2).zip(&data[..take]) {
                        self.close[i] = byte ^ self.mask.map_or(0, |key| key[i % 4]);
                    }
                }
                self.offset += take as u64;
                self.remaining -= take as u64;
                data = &data[take..];
                if self.remaining == 0 {
                    self.end_of_frame();
                }
                continue;
            }
            // Header: first the two fixed bytes, then the rest they announce.
            let need = self.header_len();
            let take = (need - self.have as usize).min(data.len());
            self.header[self.have as usize..self.have as usize + take]
                .copy_from_slice(&data[..take]);
            self.have += take as u8;
            data = &data[take..];
            if self.have as usize == self.header_len() {
                self.start_frame();
                if STOP {
                    return (total - data.len(), true);
                }
            }
        }
        (total, false)
    }

    /// Between two frames, and not inside a fragmented message.
    #[cfg(test)]
    pub(crate) fn at_message_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0 && !self.fragmented
    }

    /// Length of the header known so far (2 until the length byte is in).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let len7 = self.header[1] & 0x7f;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn start_frame(&mut self) {
        self.header_len = self.header_len() as u8;
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        self.opcode = h[0] & 0x0f;
        let len7 = h[1] & 0x7f;
        let (len, rest) = match len7 {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = (h[1] & 0x80 != 0).then(|| [h[rest], h[rest + 1], h[rest + 2], h[rest + 3]]);
        self.have = 0;
        self.frames += 1;
        self.len = len;
        match self.opcode {
            OP_CONTINUATION if fin && self.fragmented => {
                self.fragmented = false;
                self.messages += 1;
                self.message_len = self.message_len.saturating_add(len);
            }
            OP_CONTINUATION => self.message_len = self.message_len.saturating_add(len),
            // Text, binary and the reserved data opcodes start a message.
            0x1..=0x7 => {
                self.message_len = len;
                if fin {
                    self.messages += 1;
                } else {
                    self.fragmented = true;
                }
            }
            _ => {}
        }
        self.offset = 0;
        self.remaining = len;
        if len == 0 {
            self.end_of_frame();
        }
    }

    fn end_of_frame(&mut self) {
        if self.opcode == OP_CLOSE {
            self.closes = self.closes.saturating_add(1);
            if self.offset >= 2 && self.close_code.is_none() {
                self.close_code = Some(u16::from_be_bytes(self.close));
            }
        }
        self.offset = 0;
    }
}

// ---------------------------------------------------------------------
// The proxy's own frames: close codes, control frames.
// ---------------------------------------------------------------------

/// Close code: the endpoint is going away.
pub(crate) const GOING_AWAY: u16 = 1001;
/// Close code: the server met an unexpected condition (here: the backend
/// went away without a Close).
pub(crate) const INTERNAL_ERROR: u16 = 1011;
/// Close code: a message too big to process.
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
/// Close code: a message that breaks the endpoint's policy.
pub(crate) const POLICY_VIOLATION: u16 = 1008;

/// Whether `payload`, unmasked with `mask`, equals `expected`.
pub(crate) fn unmasked_eq(payload: &[u8], mask: Option<[u8; 4]>, expected: &[u8]) -> bool {
    payload.len() == expected.len()
        && payload
            .iter()
            .zip(expected)
            .enumerate()
            .all(|(i, (&byte, &want))| byte ^ mask.map_or(0, |key| key[i % 4]) == want)
}

/// A Close frame with status `code`, masked as a client's (toward a
/// backend) or not.
pub(crate) fn close_frame(code: u16, masked: bool) -> Vec<u8> {
    control_frame(OP_CLOSE, &code.to_be_bytes(), masked)
}

/// A control frame (payload of at most 125 bytes), masked with a fresh
/// key when `masked`.
pub(crate) fn control_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    if masked {
        let key = (crate::random::random_u64() as u32).to_ne_bytes();
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.push(payload.len() as u8);
        frame.extend_from_slice(payload);
    }
    frame
}

/// Feed `data` to trackers three ways — whole, in chunks whose sizes
/// follow from `seed`, and header by header with partial headers held back
/// and fed again (as the frame-aware relay does) — and panic if they
/// disagree. Used by the property tests and the fuzz target.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_consistency(data: &[u8], seed: u8) {
    let mut whole = FrameTracker::default();
    whole.feed(data);

    let mut chunked = FrameTracker::default();
    let mut stepped = FrameTracker::default();
    let mut headers = 0u64;
    let mut held: Vec<u8> = Vec::new();
    let mut state = u32::from(seed);
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = 1 + (state >> 16) as usize % (1 + usize::from(seed) * 4);
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        chunked.feed(chunk);

        let mut input = std::mem::take(&mut held);
        input.extend_from_slice(chunk);
        let mut pos = 0;
        while pos < input.len() {
            let (n, head) = stepped.feed_to_header(&input[pos..]);
            assert!(n > 0, "feed_to_header made no progress");
            pos += n;
            if let Some(head) = head {
                headers += 1;
                assert!((2..=14).contains(&head.header_len));
                assert!(pos >= head.header_len, "a header was split despite holding");
            }
        }
        if let Some((header, have)) = stepped.take_partial_header() {
            assert!(have < 14);
            assert_eq!(&header[..have], &input[input.len() - have..]);
            held = header[..have].to_vec();
        }
    }
    // What is still held is a partial header: feed it to compare states.
    stepped.feed(&held);
    for other in [&chunked, &stepped] {
        assert_eq!(whole.frames, other.frames);
        assert_eq!(whole.messages, other.messages);
        assert_eq!(whole.close_code, other.close_code);
        assert_eq!(whole.closes, other.closes);
        assert_eq!(whole.at_frame_boundary(), other.at_frame_boundary());
        assert_eq!(whole.fragmented, other.fragmented);
    }
    assert_eq!(headers, whole.frames);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encode one frame as a client (masked) or a server would.
    pub(crate) use wsproxy_test_support::ws_frame as frame;

    #[test]
    fn counts_frames_messages_and_close_codes() {
        let key = Some([1, 2, 3, 4]);
        let mut stream = Vec::new();
        stream.extend(frame(true, 0x1, b"hello", key));
        stream.extend(frame(false, 0x2, &[0; 70_000], key));
        stream.extend(frame(true, 0x9, b"ping", key)); // interleaved control
        stream.extend(frame(false, 0x0, &[1; 300], key));
        stream.extend(frame(true, 0x0, b"", key));
        stream.extend(frame(true, 0x8, &[0x0f, 0xa0, b'b', b'y', b'e'], key));
        let mut tracker = FrameTracker::default();
        for chunk in stream.chunks(7) {
            tracker.feed(chunk);
        }
        assert_eq!(tracker.frames, 6);
        assert_eq!(tracker.messages, 2);
        assert_eq!(tracker.close_code, Some(4000));
        assert!(tracker.at_message_boundary());
    }

    #[test]
    fn knows_when_a_fragmented_message_is_open() {
        let mut tracker = FrameTracker::default();
        tracker.feed(&frame(false, 0x1, b"part", None));
        assert!(
            !tracker.at_message_boundary(),
            "inside a fragmented message"
        );
        tracker.feed(&frame(true, 0xA, b"", None));
        assert!(
            !tracker.at_message_boundary(),
            "a control frame does not end it"
        );
        let last = frame(true, 0x0, b"end", None);
        tracker.feed(&last[..3]);
        assert!(!tracker.at_message_boundary(), "inside a frame");
        tracker.feed(&last[3..]);
        assert!(tracker.at_message_boundary());
        assert_eq!((tracker.frames, tracker.messages), (3, 1));
    }

    /// A random frame: fin, opcode, payload length, masked.
    pub(crate) fn any_frame() -> impl Strategy<Value = (bool, u8, usize, bool)> {
        (
            any::<bool>(),
            prop_oneof![
                Just(0x0u8),
                Just(0x1),
                Just(0x2),
                Just(0x8),
                Just(0x9),
                Just(0xA)
            ],
            prop_oneof![0usize..130, Just(8), 60_000usize..70_000],
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes, cut anywhere: no panic, and the result does not
        /// depend on how the stream was cut.
        #[test]
        fn any_bytes_in_any_chunks(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                   cuts in proptest::collection::vec(1usize..300, 0..64)) {
            let mut whole = FrameTracker::default();
            whole.feed(&bytes);
            let mut chunked = FrameTracker::default();
            let mut rest = &bytes[..];
            for cut in cuts {
                let (head, tail) = rest.split_at(cut.min(rest.len()));
                chunked.feed(head);
                rest = tail;
            }
            chunked.feed(rest);
            prop_assert_eq!(whole.frames, chunked.frames);
            prop_assert_eq!(whole.messages, chunked.messages);
            prop_assert_eq!(whole.close_code, chunked.close_code);
            prop_assert_eq!(whole.at_message_boundary(), chunked.at_message_boundary());
        }

        /// The fuzz target's invariants, on stable.
        #[test]
        fn whole_chunked_and_stepped_agree(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                           seed in any::<u8>()) {
            check_consistency(&bytes, seed);
        }

        /// The same on streams of real frames, where arbitrary bytes would
        /// mostly make one huge frame.
        #[test]
        fn whole_chunked_and_stepped_agree_on_frames(frames in proptest::collection::vec(any_frame(), 1..12),
                                                     seed in any::<u8>()) {
            let bytes: Vec<u8> = frames
                .iter()
                .flat_map(|&(fin, opcode, len, masked)| frame(fin, opcode, &vec![3; len], masked.then_some([1, 2, 3, 4])))
                .collect();
            check_consistency(&bytes, seed);
        }

        /// Well-formed frames, cut anywhere: every frame is counted, and a
        /// boundary is seen exactly where one is.
        #[test]
        fn well_formed_frames(frames in proptest::collection::vec(any_frame(), 1..12),
                              chunk in 1usize..5000) {
            let mut tracker = FrameTracker::default();
            let mut fragmented = false;
            let mut messages = 0;
            for (fin, opcode, len, masked) in frames.iter().copied() {
                let bytes = frame(fin, opcode, &vec![7; len], masked.then_some([9, 8, 7, 6]));
                for piece in bytes.chunks(chunk) {
                    tracker.feed(piece);
                }
                match opcode {
                    0x0 if fin && fragmented => { fragmented = false; messages += 1; }
                    0x1 | 0x2 if fin => messages += 1,
                    0x1 | 0x2 => fragmented = true,
                    _ => {}
                }
                prop_assert_eq!(tracker.at_message_boundary(), !fragmented);
            }
            prop_assert_eq!(tracker.frames, frames.len() as u64);
            prop_assert_eq!(tracker.messages, messages);
        }
    }
}
