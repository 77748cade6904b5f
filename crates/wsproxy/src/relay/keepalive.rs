//! Keepalive toward one peer of a tunnel: when to ping, when to give up.

use std::sync::OnceLock;

use tokio::time::Instant;

use crate::random::random_u64;
use crate::settings::Keepalive;

/// Payload of the proxy's Pings: a random token of this process, so that
/// the answering Pongs can be told from the application's.
pub(super) fn ping_token() -> &'static [u8; 8] {
    static TOKEN: OnceLock<[u8; 8]> = OnceLock::new();
    TOKEN.get_or_init(|| random_u64().to_be_bytes())
}

/// Keepalive state toward one peer.
pub(super) struct Alive {
    pub(super) settings: Keepalive,
    /// Bytes received from the peer when last looked at.
    pub(super) seen: u64,
    /// When a ping is due if nothing arrives before: an interval after
    /// something last arrived from the peer.
    pub(super) ping_at: Instant,
    /// A ping was asked for and is waiting for a frame boundary.
    pub(super) asked: bool,
    /// Pings written to the peer when last looked at.
    pub(super) pings: u64,
    /// A ping was written; something must arrive by then.
    pub(super) reply_by: Option<Instant>,
}

impl Alive {
    /// Boxed: most tunnels have none, and need not carry room for it.
    pub(super) fn new(settings: Option<Keepalive>, now: Instant) -> Option<Box<Self>> {
        settings.map(|settings| {
            Box::new(Alive {
                settings,
                seen: 0,
                ping_at: now + settings.interval,
                asked: false,
                pings: 0,
                reply_by: None,
            })
        })
    }

    /// Update from the bytes received from the peer and the pings written
    /// to it so far. Returns whether a ping should be asked for now, or
    /// `Err` when the peer missed its deadline. The timeout runs from when
    /// the ping was written, not asked for: a ping waits for a frame
    /// boundary, and a long frame on its way to the peer is not the peer's
    /// fault.
    pub(super) fn check(&mut self, received: u64, pings: u64, now: Instant) -> Result<bool, ()> {
        if pings != self.pings {
            self.pings = pings;
            self.asked = false;
            self.reply_by = Some(now + self.settings.timeout);
        }
        if received != self.seen {
            self.seen = received;
            self.ping_at = now + self.settings.interval;
            self.reply_by = None;
        }
        match self.reply_by {
            Some(by) if now >= by => Err(()),
            Some(_) => Ok(false),
            None if !self.asked && now >= self.ping_at => {
                self.asked = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// When to look again; `None` while a ping waits to be written.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self.reply_by {
            Some(by) => Some(by),
            None if self.asked => None,
            None => Some(self.ping_at),
        }
    }
}
