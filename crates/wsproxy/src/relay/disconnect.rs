//! A side whose connection ends without a Close frame: telling the other
//! side (`close_on_disconnect`).

use std::time::Duration;

use tokio::time::Instant;

use super::closing::{Closing, Why};
use super::pump::{Failure, Pump};
use crate::frame::{GOING_AWAY, INTERNAL_ERROR};
use crate::outcome::{End, Gone, Reason, Vanished};

/// How long, at most, the proxy waits for the survivor to answer the Close
/// it sent after the other side vanished (less if the half-close timeout
/// is shorter): a client must learn of the end promptly even if it never
/// answers.
pub(super) const VANISHED_GRACE: Duration = Duration::from_secs(1);

/// What the relay knows when a direction stops with a [`Failure`]: a side
/// is gone.
pub(super) struct Disconnect {
    /// `close_on_disconnect`.
    pub(super) enabled: bool,
    /// Who closed first so far (`true`: the client): who sent the first
    /// Close frame, or without one, who ended its stream first.
    pub(super) closed_first: Option<bool>,
    /// When the wait for the survivor's answer ends.
    pub(super) grace: Instant,
}

impl Disconnect {
    /// The up direction (`from_client`) or the down one stopped with
    /// `failure`: the side it reads from, or on a write error the side it
    /// writes to, is gone. Either the survivor is told with a Close of the
    /// proxy's own and the tunnel goes on until it answers (`Ok`), or it
    /// goes on as without the setting: an end of stream is passed on as a
    /// half-close (`Ok`), an error ends the tunnel (`Err`).
    pub(super) fn handle(
        self,
        failure: Failure,
        from_client: bool,
        up: &mut Pump,
        down: &mut Pump,
        closing: &mut Option<Closing>,
    ) -> Result<(), End> {
        let (client, gone) = match failure {
            Failure::Ended => (from_client, Gone::Eof),
            Failure::Read(e) => (from_client, Gone::Read(e)),
            // The up direction writes to the backend.
            Failure::Write(e) => (!from_client, Gone::Write(e)),
        };
        // After one side vanished, the survivor's end of stream ends the
        // tunnel the usual way, its error at once.
        if let Some(vanishing) = closing.take_if(|c| matches!(c.why, Why::Vanished(_))) {
            let Some(error) = gone.into_error() else {
                *closing = Some(vanishing);
                return Ok(());
            };
            return Err(vanishing.failed(client, error));
        }
        // The survivor hears the Close from the direction that carried the
        // vanished side's bytes, right after the last of them: not inside a
        // frame, and not after a Close (forwarded or the proxy's) or with
        // one of the proxy's already due.
        let (to_survivor, to_dead) = if client { (up, down) } else { (down, up) };
        let can_tell = self.enabled
            && !to_survivor.done
            && !to_survivor.closed_toward()
            && to_survivor.close_due.is_none()
            && to_survivor.frames.at_frame_boundary();
        if !can_tell {
            return match gone.into_error() {
                None => Ok(()),
                Some(e) if client => Err(End::ClientError(e)),
                Some(e) => Err(End::BackendError(e)),
            };
        }
        let during = match closing {
            Some(Closing {
                why: Why::Proxy(reason),
                ..
            }) => Some(*reason),
            _ => None,
        };
        let draining = matches!(during, Some(Reason::Shutdown | Reason::BackendDown));
        let (code, reason): (u16, &'static [u8]) = if client {
            (GOING_AWAY, b"client went away")
        } else if draining {
            (GOING_AWAY, b"going away")
        } else {
            (INTERNAL_ERROR, b"backend went away")
        };
        to_survivor.close_with_reason(code, reason);
        to_survivor.source_gone();
        to_dead.destination_gone();
        let why = Why::Vanished(Vanished {
            client,
            gone,
            code,
            client_first: self.closed_first.unwrap_or(client),
            during,
        });
        match closing {
            Some(closing) => {
                closing.why = why;
                closing.deadline = closing.deadline.min(self.grace);
                // The vanished side is not waited for.
                if client {
                    closing.wait_client = false;
                } else {
                    closing.wait_backend = false;
                }
            }
            None => {
                *closing = Some(Closing {
                    why,
                    deadline: self.grace,
                    wait_client: !client,
                    wait_backend: client,
                });
            }
        }
        Ok(())
    }
}
