//! Picking a backend for one handshake attempt: the strategy over the
//! usable members (sticky cookie, backups, `max_conns`, passive health),
//! the load unit the choice holds, and what its outcome teaches passive
//! health.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use http::HeaderValue;
use http::request::Parts;
use tokio::time::Instant;

use super::BackendId;
use super::member::Member;
use super::set::{Backends, SetState};
use super::strategy::Candidate;
use crate::Upstream;
use crate::clock::now;
use crate::drain::CloseSignal;

/// The backend chosen for one handshake attempt; counts toward its load
/// until dropped, so it moves into the tunnel task.
pub(crate) struct Picked {
    /// What closes the tunnel if the backend goes down or is removed,
    /// taken when it was chosen (so a removal during the handshake is not
    /// missed).
    pub(super) close: Arc<CloseSignal>,
    pub(super) load: Load,
}

/// One unit of a backend's load.
pub(super) struct Load {
    pub(super) member: Arc<Member>,
    pub(super) set: Weak<SetState>,
}

impl Drop for Load {
    fn drop(&mut self) {
        // SeqCst with `drain`: of a drain and the last unit's drop, one
        // sees the other.
        let before = self.member.open.fetch_sub(1, Ordering::SeqCst);
        // The last tunnel of a draining backend removes it.
        if before == 1
            && self.member.draining.load(Ordering::SeqCst)
            && let Some(set) = self.set.upgrade()
        {
            set.take_member(&self.member);
            tracing::info!(backend = %self.member.backend.upstream, "drained backend removed: its last tunnel ended");
        }
    }
}

impl Picked {
    pub(super) fn member(&self) -> &Member {
        &self.load.member
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        &self.member().backend.upstream
    }

    /// Its backend's URL as a metrics label.
    pub(crate) fn label(&self) -> Arc<str> {
        self.member().label()
    }

    pub(crate) fn id(&self) -> BackendId {
        self.member().backend.id
    }

    /// What closes its tunnel, and the load unit the tunnel task holds.
    pub(crate) fn into_parts(self) -> (Arc<CloseSignal>, impl Send + 'static) {
        (self.close, self.load)
    }
}

impl Backends {
    /// Choose a backend for `request` among those not `tried`; `None` when
    /// none is usable. The sticky cookie to set, if any, comes along.
    pub(crate) fn pick(
        &self,
        request: &Parts,
        tried: &[BackendId],
    ) -> Option<(Picked, Option<HeaderValue>)> {
        if self.config.active.is_some() && !self.state.probing.load(Ordering::Relaxed) {
            self.start_probes();
        }
        let members = self.state.read();
        let passive = self.passive_applies(&members);
        let now = now();
        let slow_start = self.config.slow_start;
        let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(members.len());
        // Primaries, else backups; and when every backend is down by the
        // passive checks alone, all of them again (nginx then resets its
        // failure counts): a guess beats a certain 503.
        let mut passive = passive;
        for (backup, lenient) in [(false, false), (true, false), (false, true), (true, true)] {
            if lenient {
                if !passive {
                    break;
                }
                passive = false;
            }
            candidates.extend(
                members
                    .iter()
                    .filter(|m| m.backup() == backup && !tried.contains(&m.backend.id))
                    .filter(|m| m.usable(now, passive))
                    .map(|m| Candidate {
                        member: m,
                        weight: m.weight(now, slow_start),
                    }),
            );
            if !candidates.is_empty() {
                if lenient {
                    tracing::info!("every backend is down by passive checks: trying them anyway");
                }
                break;
            }
        }
        let sticky = self.config.sticky.as_ref();
        let wanted = sticky
            .and_then(|s| crate::client::cookie(request, &s.name))
            .and_then(|v| BackendId::parse(&v));
        while !candidates.is_empty() {
            let i = sticky
                .zip(wanted)
                .and_then(|(s, v)| candidates.iter().position(|c| s.value(c.id()) == v))
                .unwrap_or_else(|| {
                    self.config
                        .strategy
                        .pick(request, &candidates)
                        .min(candidates.len() - 1)
                });
            let member = candidates[i].member;
            let before = member.open.fetch_add(1, Ordering::SeqCst);
            let load = Load {
                member: member.clone(),
                set: Arc::downgrade(&self.state),
            };
            let close = member.close_signal();
            if before >= member.max_conns() || member.went_away(passive, now) {
                // Filled up, or went down or away, since it was listed;
                // dropping `load` gives the unit back (and removes a
                // draining member whose last unit it was).
                drop(load);
                candidates.swap_remove(i);
                continue;
            }
            let cookie = sticky
                .filter(|s| wanted != Some(s.value(member.backend.id)))
                .map(|s| s.cookie(member.backend.id));
            return Some((Picked { close, load }, cookie));
        }
        None
    }

    /// Count a failed handshake attempt on `picked` (passive health).
    pub(crate) fn failed(&self, picked: &Picked) {
        let passive = self.config.passive;
        let member = picked.member();
        if passive.max_fails == 0 || !self.passive_applies(&self.state.read()) {
            return;
        }
        let at = Instant::now();
        let mut fails = member.fails.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, last) = &mut *fails;
        // Failures further apart than fail_timeout do not add up; but a
        // backend that was marked down and fails again on its first try
        // after fail_timeout is marked down again at once (nginx).
        let expired = last.is_none_or(|t| at.duration_since(t) > passive.fail_timeout);
        if expired && *count < passive.max_fails {
            *count = 0;
        }
        *count = count.saturating_add(1);
        *last = Some(at);
        if *count < passive.max_fails {
            return;
        }
        let failed = *count;
        drop(fails);
        let timeout = u64::try_from(passive.fail_timeout.as_nanos()).unwrap_or(u64::MAX);
        let until = now().saturating_add(timeout);
        if member.down_until.swap(until, Ordering::Relaxed) == 0 {
            member.transition(false);
            tracing::warn!(
                backend = %member.backend.upstream,
                failed,
                fail_timeout = ?passive.fail_timeout,
                "backend down: failed handshakes reached max_fails"
            );
            if let Some(grace) = self.config.close_when_down {
                member.close_tunnels(grace);
            }
        }
    }

    /// Count a good handshake on `picked`. Its failures are forgotten once
    /// the last one is older than fail_timeout (a success in between does
    /// not clear them, as in nginx), or at once if it was marked down and
    /// was tried anyway because every backend was.
    pub(crate) fn succeeded(&self, picked: &Picked) {
        let member = picked.member();
        let mut fails = member.fails.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, last) = &mut *fails;
        // Only a member that was down is written to (a shared cache line).
        let was_down = member.down_until.load(Ordering::Relaxed) != 0
            && member.down_until.swap(0, Ordering::Relaxed) != 0;
        let expired = last
            .is_none_or(|t| Instant::now().duration_since(t) > self.config.passive.fail_timeout);
        if expired || was_down {
            *count = 0;
            *last = None;
        }
        if was_down {
            member.transition(true);
            tracing::info!(backend = %member.backend.upstream, "backend up: a handshake succeeded");
        }
    }
}
