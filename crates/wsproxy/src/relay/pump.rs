//! One direction of a tunnel: read from the source, pass frames (or
//! chunks) on to the destination, speak for the proxy at a frame boundary.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::keepalive::ping_token;
use crate::frame::{
    FrameTracker, GOING_AWAY, Head, MESSAGE_TOO_BIG, OP_CLOSE, OP_PING, OP_PONG, POLICY_VIOLATION,
    control_frame, unmasked_eq,
};
use crate::outcome::Direction;
use crate::settings::{Exceeded, MessageLimits};

/// Size of the per-thread scratch buffer reads go into.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

/// Room below which a direction stops reading more into the scratch
/// buffer and writes what it has.
const MIN_READ: usize = 4 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Why a direction stopped before it was done.
pub(super) enum Failure {
    /// Reading from the source failed.
    Read(io::Error),
    /// Writing to the destination failed.
    Write(io::Error),
    /// The source ended (reported once, with `close_on_disconnect`): the
    /// relay decides whether the destination hears a Close first.
    Ended,
}

/// One direction of a tunnel.
pub(super) struct Pump {
    /// Bytes to write before reading more: only under back-pressure.
    pub(super) pending: Option<Pending>,
    /// Bytes read but not yet decided on (a partial frame header, or a Pong
    /// not yet whole), fed again in front of the next read.
    pub(super) held: Vec<u8>,
    /// The source reached end of stream.
    pub(super) eof: bool,
    /// The destination was shut down after `eof`.
    pub(super) done: bool,
    /// Written bytes must be flushed before waiting for more input.
    pub(super) unflushed: bool,
    /// Bytes forwarded.
    pub(super) bytes: u64,
    /// Bytes read from the source, forwarded or not.
    pub(super) received: u64,
    /// Frame boundaries of what passes, read from headers only.
    pub(super) frames: FrameTracker,
    /// Frames the proxy writes to the destination are masked (it is the
    /// backend, and the proxy speaks to it as a client).
    pub(super) mask: bool,
    pub(super) limits: MessageLimits,
    /// Drop the Pongs that answer the proxy's own Pings to the source.
    pub(super) own_pongs: bool,
    /// Send a Ping to the destination at the next frame boundary.
    pub(super) ping_due: bool,
    /// Send a Close with this code and reason to the destination at the
    /// next frame boundary.
    pub(super) close_due: Option<(u16, &'static [u8])>,
    /// The proxy sent a Close to the destination; what the source sends
    /// from now on is read (to see its Close) but not forwarded.
    pub(super) close_sent: bool,
    /// A frame from the source broke a limit.
    pub(super) exceeded: Option<Exceeded>,
    /// Pings of the proxy's own written to the destination.
    pub(super) pings: u64,
    /// When the next message is due at the rate limit (GCRA's theoretical
    /// arrival time).
    pub(super) rate_due: Option<Instant>,
    /// Report the source's end to the relay before passing it on
    /// (`close_on_disconnect`).
    pub(super) report_end: bool,
    /// The source's end was reported.
    pub(super) end_reported: bool,
    /// At the source's end, leave the destination open: the proxy's Close
    /// went to it, and the tunnel closes it.
    pub(super) leave_open: bool,
    /// The destination is gone: nothing is written to it, not even a
    /// shutdown.
    pub(super) dst_gone: bool,
}

pub(super) struct Pending {
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
}

impl Pump {
    pub(super) fn new(
        mask: bool,
        limits: MessageLimits,
        own_pongs: bool,
        report_end: bool,
    ) -> Self {
        Pump {
            pending: None,
            held: Vec::new(),
            eof: false,
            done: false,
            unflushed: false,
            bytes: 0,
            received: 0,
            frames: FrameTracker::default(),
            mask,
            limits,
            own_pongs,
            ping_due: false,
            close_due: None,
            close_sent: false,
            exceeded: None,
            pings: 0,
            rate_due: None,
            report_end,
            end_reported: false,
            leave_open: false,
            dst_gone: false,
        }
    }

    pub(super) fn totals(&self) -> Direction {
        Direction {
            bytes: self.bytes,
            frames: self.frames.frames,
            messages: self.frames.messages,
            close_code: self.frames.close_code,
        }
    }

    /// Whether the destination has been sent a Close (forwarded or the
    /// proxy's): nothing of the proxy's own may follow it.
    pub(super) fn closed_toward(&self) -> bool {
        self.close_sent || self.frames.closes > 0
    }

    /// Send a Ping of the proxy's own to the destination at the next frame
    /// boundary; `false` if it can no longer be sent.
    pub(super) fn ping(&mut self) -> bool {
        if self.done || self.closed_toward() {
            return false;
        }
        self.ping_due = true;
        true
    }

    /// Everything written has reached the destination's socket.
    pub(super) fn flushed(&self) -> bool {
        // A done direction shut its destination down, which flushed it (or
        // left that to the tunnel closing both sockets).
        self.done || (self.pending.is_none() && !self.unflushed)
    }

    /// A whole Close frame has passed from the source, and nothing of the
    /// source's waits to be written: the source may send nothing more.
    pub(super) fn close_passed(&self) -> bool {
        self.frames.closes > 0
            && self.frames.at_frame_boundary()
            && self.pending.is_none()
            && self.held.is_empty()
    }

    /// Send Close `code` to the destination at the next frame boundary,
    /// unless the source already sent one through (a second Close would
    /// break the protocol), and forward nothing after it.
    pub(super) fn close_with(&mut self, code: u16) {
        let reason: &[u8] = match code {
            MESSAGE_TOO_BIG => b"message too big",
            POLICY_VIOLATION => b"policy violation",
            _ => b"going away",
        };
        self.close_with_reason(code, reason);
    }

    /// [`close_with`](Self::close_with) and a reason of its own (at most
    /// 123 bytes).
    pub(super) fn close_with_reason(&mut self, code: u16, reason: &'static [u8]) {
        if !self.closed_toward() {
            self.close_due = Some((code, reason));
        }
    }

    /// Forward nothing more, and send nothing of the proxy's own: the
    /// destination is taken for dead.
    pub(super) fn mute(&mut self) {
        self.close_due = None;
        self.ping_due = false;
        self.close_sent = true;
    }

    /// The source vanished (after [`close_with`](Self::close_with)): read
    /// nothing more from it; a partial frame held back is never sent. Once
    /// the Close is written, the destination is left open for the tunnel
    /// to close.
    pub(super) fn source_gone(&mut self) {
        self.eof = true;
        self.end_reported = true;
        self.held = Vec::new();
        self.leave_open = true;
    }

    /// The destination vanished: [`mute`](Self::mute), drop what waits to
    /// be written to it, and do not shut it down. The source is still read,
    /// to see its Close.
    pub(super) fn destination_gone(&mut self) {
        self.mute();
        self.dst_gone = true;
        self.pending = None;
        self.unflushed = false;
    }

    /// Whether this direction must look at frames rather than pass chunks.
    pub(super) fn frame_aware(&self) -> bool {
        !self.limits.is_none() || self.own_pongs || self.ping_due || self.close_due.is_some()
    }

    /// Move bytes from `src` to `dst`; ready once `src` ended and `dst` was
    /// shut down. When the other direction is already `done`, `dst` is not
    /// shut down: the tunnel closes both sockets next, and closing sends
    /// the same FIN (`dst` was read to its end, so no reset) for one
    /// system call less per tunnel. Nor is it when it is gone, or was sent
    /// the proxy's Close after `src` vanished (only flushed then). With
    /// `report_end`, the end of `src` is first reported once as
    /// [`Failure::Ended`].
    pub(super) fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        other_done: bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        // The source was read dry in this poll and has nothing more: it is
        // not asked again (its waker is registered).
        let mut drained = false;
        loop {
            if let Some(pending) = &mut self.pending {
                while pending.pos < pending.buf.len() {
                    let n = ready!(dst.as_mut().poll_write(cx, &pending.buf[pending.pos..]))
                        .map_err(Failure::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    pending.pos += n;
                }
                self.pending = None;
                self.unflushed = true;
            }
            if self.frames.at_frame_boundary() && (self.ping_due || self.close_due.is_some()) {
                self.speak(cx, dst.as_mut())?;
                continue;
            }
            if self.eof {
                if self.report_end && !self.end_reported {
                    self.end_reported = true;
                    return Poll::Ready(Err(Failure::Ended));
                }
                if self.leave_open {
                    ready!(dst.as_mut().poll_flush(cx)).map_err(Failure::Write)?;
                    self.unflushed = false;
                } else if !other_done && !self.dst_gone {
                    ready!(dst.as_mut().poll_shutdown(cx)).map_err(Failure::Write)?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = if drained {
                Poll::Pending
            } else {
                self.read_dry(cx, src.as_mut(), dst.as_mut(), &mut drained)
            };
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => self.unflushed = !self.dst_gone,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.unflushed {
                        // A flush that is not ready yet registers the waker;
                        // it is tried again on the next wake-up.
                        if let Poll::Ready(r) = dst.as_mut().poll_flush(cx) {
                            r.map_err(Failure::Write)?;
                            self.unflushed = false;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Read `src` into the scratch buffer until it has nothing more or the
    /// buffer is nearly full, then pass what came. `drained` is set when
    /// the source said it has nothing more (its waker is registered).
    fn read_dry<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        drained: &mut bool,
    ) -> Poll<Result<usize, Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let held = self.held.len();
            scratch[..held].copy_from_slice(&self.held);
            // Read the source dry (up to the scratch buffer) before
            // writing: an HTTP/2 stream gives one DATA frame per read,
            // and a message of several frames then goes out in one
            // write. A TCP source that gave less than asked is known
            // drained, so its second read is answered at once, without
            // a system call.
            let mut filled = held;
            let mut end = None;
            loop {
                let mut buf = ReadBuf::new(&mut scratch[filled..]);
                match src.as_mut().poll_read(cx, &mut buf) {
                    Poll::Pending => {
                        *drained = true;
                        break;
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            end = Some(Ok(()));
                            break;
                        }
                        filled += n;
                        self.received += n as u64;
                        if SCRATCH_SIZE - filled < MIN_READ {
                            break;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        end = Some(Err(e));
                        break;
                    }
                }
            }
            let read = filled - held;
            if read == 0 && end.is_none() {
                return Poll::Pending;
            }
            if read > 0 {
                self.held = Vec::new();
                self.pass(cx, dst.as_mut(), &scratch[..filled])?;
            }
            match end {
                None => Poll::Ready(Ok(read)),
                Some(Err(e)) => Poll::Ready(Err(Failure::Read(e))),
                Some(Ok(())) => {
                    // End of stream: what was held back goes as is,
                    // unless nothing may follow the proxy's Close; the
                    // tracker sees it (a partial frame leaves no
                    // boundary for a Close of the proxy's).
                    let rest = std::mem::take(&mut self.held);
                    if !self.close_sent {
                        self.frames.feed(&rest);
                        self.forward(cx, dst.as_mut(), &rest)?;
                    }
                    Poll::Ready(Ok(0))
                }
            }
        })
    }

    /// Pass one chunk read from the source.
    pub(super) fn pass<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.close_sent {
            // Only watched for the source's Close.
            self.frames.feed(data);
            return Ok(());
        }
        if !self.frame_aware() {
            self.frames.feed(data);
            return self.forward(cx, dst, data);
        }
        // Bytes `from..pos` are to be forwarded and not yet written.
        let (mut from, mut pos) = (0, 0);
        // A partial header left by the fast path was forwarded already: it
        // cannot be held back or refused (neither limits nor Pong checks
        // were on, or this direction would not have used the fast path).
        let mut carried = self.frames.partial_header_len() > 0;
        while pos < data.len() {
            if self.frames.at_frame_boundary() && (self.ping_due || self.close_due.is_some()) {
                self.forward(cx, dst.as_mut(), &data[from..pos])?;
                from = pos;
                self.speak(cx, dst.as_mut())?;
                if self.close_sent {
                    self.frames.feed(&data[pos..]);
                    return Ok(());
                }
            }
            let (n, head) = self.frames.feed_to_header(&data[pos..]);
            pos += n;
            let Some(head) = head else { break };
            let Some(start) = pos.checked_sub(head.header_len).filter(|_| !carried) else {
                carried = false;
                continue;
            };
            if let Some(exceeded) = self.limits.check(&head).or_else(|| self.over_rate(&head)) {
                // Nothing of this frame goes out: Close 1001 instead, and
                // the sender gets 1009 (too big) or 1008 (too fast) from
                // the other direction.
                self.forward(cx, dst.as_mut(), &data[from..start])?;
                self.exceeded = Some(exceeded);
                self.close_with(GOING_AWAY);
                self.speak(cx, dst.as_mut())?;
                self.frames.feed(&data[pos..]);
                return Ok(());
            }
            if self.own_pongs && head.opcode == OP_PONG && head.len == 8 {
                let end = pos + 8;
                if end > data.len() {
                    // Hold the Pong back until it is whole.
                    self.forward(cx, dst.as_mut(), &data[from..start])?;
                    self.frames.unread_control_frame();
                    self.held = data[start..].to_vec();
                    return Ok(());
                }
                if unmasked_eq(&data[pos..end], head.mask, ping_token()) {
                    // The answer to the proxy's own Ping: not forwarded.
                    self.forward(cx, dst.as_mut(), &data[from..start])?;
                    self.frames.feed(&data[pos..end]);
                    pos = end;
                    from = end;
                }
            }
        }
        // A partial header at the end waits for the rest of it.
        let mut to = data.len();
        if !carried && let Some((header, have)) = self.frames.take_partial_header() {
            to -= have;
            self.held = header[..have].to_vec();
        }
        self.forward(cx, dst, &data[from..to])
    }

    /// Write a frame of the proxy's own: a due Close, else a due Ping.
    pub(super) fn speak<W>(&mut self, cx: &mut Context<'_>, dst: Pin<&mut W>) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.closed_toward() {
            // A Close went through since this was asked for: nothing may
            // follow it.
            self.close_due = None;
            self.ping_due = false;
            return Ok(());
        }
        let frame = if let Some((code, reason)) = self.close_due.take() {
            self.close_sent = true;
            self.ping_due = false;
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
            control_frame(OP_CLOSE, &payload, self.mask)
        } else {
            self.ping_due = false;
            self.pings += 1;
            control_frame(OP_PING, ping_token(), self.mask)
        };
        self.write(cx, dst, &frame)
    }

    /// Forward bytes of the source.
    pub(super) fn forward<W>(
        &mut self,
        cx: &mut Context<'_>,
        dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        self.bytes += data.len() as u64;
        self.write(cx, dst, data)
    }

    /// Write `data` to `dst` as far as it goes without waiting; keep the
    /// rest in `pending`, behind what is already there.
    pub(super) fn write<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if data.is_empty() {
            return Ok(());
        }
        self.unflushed = true;
        if let Some(pending) = &mut self.pending {
            pending.buf.extend_from_slice(data);
            return Ok(());
        }
        let mut pos = 0;
        while pos < data.len() {
            match dst.as_mut().poll_write(cx, &data[pos..]) {
                Poll::Ready(Ok(0)) => return Err(Failure::Write(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => pos += n,
                Poll::Ready(Err(e)) => return Err(Failure::Write(e)),
                Poll::Pending => {
                    self.pending = Some(Pending {
                        buf: data[pos..].to_vec(),
                        pos: 0,
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl MessageLimits {
    /// The limit `head` breaks, if any.
    pub(super) fn check(&self, head: &Head) -> Option<Exceeded> {
        if self.max_frame.is_some_and(|max| head.len > max) {
            return Some(Exceeded::Frame(head.len));
        }
        if self.max_message.is_some_and(|max| head.message_len > max) {
            return Some(Exceeded::Message(head.message_len));
        }
        None
    }
}

impl Pump {
    /// Whether the message `head` starts comes too soon for the rate limit
    /// (GCRA: one message per interval, `extra` more at once).
    pub(super) fn over_rate(&mut self, head: &Head) -> Option<Exceeded> {
        let rate = self.limits.max_rate?;
        if !(0x1..=0x7).contains(&head.opcode) {
            return None;
        }
        (!rate.allow(&mut self.rate_due, Instant::now())).then_some(Exceeded::Rate)
    }
}
