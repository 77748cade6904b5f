//! The client connections of a server: counted in all and per client IP,
//! and the longest-idle one closed when a bound is reached.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::activity::{Activity, Stop};

/// The connections of one server (shared by its accept loops).
#[derive(Debug)]
pub(crate) struct Registry {
    max: usize,
    per_ip: Option<usize>,
    state: Mutex<State>,
    /// Notified when a connection ends.
    room: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_owner: u64,
    open: HashMap<u64, Entry>,
    /// Connections per client IP that are not being shed (only with a
    /// per-IP bound).
    per_ip: HashMap<IpAddr, usize>,
    /// Connections asked to close that have not yet.
    shedding: usize,
}

#[derive(Debug)]
struct Entry {
    /// Its client's IP; `None` until known (behind the PROXY protocol,
    /// until its header is read), not counted per IP until then.
    ip: Option<IpAddr>,
    /// The accept loop that took it.
    owner: u64,
    activity: Arc<Activity>,
    shed: bool,
}

/// Why a new connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its client IP has as many connections as allowed, none idle.
    PerIp,
}

/// One accepted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    registry: Arc<Registry>,
    id: u64,
    pub(crate) activity: Arc<Activity>,
}

impl Registry {
    pub(crate) fn new(max: usize, per_ip: Option<usize>) -> Self {
        Registry {
            max,
            per_ip,
            state: Mutex::default(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bound on connections in all.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections open and not being shed.
    pub(crate) fn open(&self) -> usize {
        let state = self.lock();
        state.open.len() - state.shedding
    }

    /// Make room for a client that is waiting: return at once under the
    /// bound, else shed the connection idle the longest, else wait until a
    /// connection ends or goes idle. Returns how many were shed.
    pub(crate) async fn room(&self) -> usize {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.open.len() - state.shedding < self.max {
                    return 0;
                }
                if state.shed_idlest(None) {
                    return 1;
                }
            }
            // A connection ends, or one just accepted is read and found
            // idle (not worth a wake-up of its own: look again shortly).
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    /// Shed the longest-idle connection, if any (the accept loop does when
    /// descriptors run out).
    pub(crate) fn shed_one(&self) -> bool {
        self.lock().shed_idlest(None)
    }

    /// Resolves when a connection ends.
    pub(crate) async fn ended(&self) {
        self.room.notified().await;
    }

    /// A number for an accept loop, to tell its connections from others'.
    pub(crate) fn owner(&self) -> u64 {
        let mut state = self.lock();
        state.next_owner += 1;
        state.next_owner
    }

    /// Tell every connection of accept loop `owner` to stop.
    pub(crate) fn stop(&self, owner: u64, how: Stop) {
        for entry in self.lock().open.values().filter(|e| e.owner == owner) {
            entry.activity.stop(how);
        }
    }

    /// Take a connection from `ip` (if known yet) for accept loop
    /// `owner`, shedding the IP's longest-idle one if it is at its bound.
    pub(crate) fn take(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        owner: u64,
    ) -> Result<(Slot, bool), Refused> {
        let mut state = self.lock();
        let shed = match ip {
            Some(ip) => state.count(ip, self.per_ip)?,
            None => false,
        };
        let id = state.next_id;
        state.next_id += 1;
        let activity = Arc::new(Activity::new());
        state.open.insert(
            id,
            Entry {
                ip,
                owner,
                activity: activity.clone(),
                shed: false,
            },
        );
        Ok((
            Slot {
                registry: self.clone(),
                id,
                activity,
            },
            shed,
        ))
    }
}

impl State {
    /// Count one more connection of `ip` under the bound `per_ip`,
    /// shedding the IP's longest-idle one if it is at its bound; whether
    /// one was shed.
    fn count(&mut self, ip: IpAddr, per_ip: Option<usize>) -> Result<bool, Refused> {
        let Some(max) = per_ip else { return Ok(false) };
        let mut shed = false;
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= max {
            if !self.shed_idlest(Some(ip)) {
                return Err(Refused::PerIp);
            }
            shed = true;
        }
        *self.per_ip.entry(ip).or_default() += 1;
        Ok(shed)
    }

    /// One connection of `ip` fewer.
    fn uncount(&mut self, ip: Option<IpAddr>) {
        if let Some(ip) = ip
            && let Some(count) = self.per_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Ask the connection idle the longest (of `ip`, if given) to close.
    /// Idle: no request in flight, no stream open, and everything it sent
    /// has been read (one just accepted may have a request waiting that
    /// its task has not read yet: that is not idle).
    fn shed_idlest(&mut self, ip: Option<IpAddr>) -> bool {
        let idlest = self
            .open
            .iter()
            .filter(|(_, entry)| {
                !entry.shed
                    && ip.is_none_or(|ip| entry.ip == Some(ip))
                    && !entry.activity.is_busy()
                    && entry.activity.has_waited()
            })
            .min_by_key(|(id, entry)| (entry.activity.idle_since(), **id))
            .map(|(id, _)| *id);
        let Some(id) = idlest else { return false };
        let entry = self.open.get_mut(&id).expect("listed above");
        entry.shed = true;
        entry.activity.evict();
        let ip = entry.ip;
        self.shedding += 1;
        self.uncount(ip);
        true
    }
}

impl Slot {
    /// Its client is `ip` (learnt after the accept, from a PROXY header):
    /// counted per IP from now on, shedding that IP's longest-idle
    /// connection if it is at its bound; refused if none is idle.
    pub(crate) fn identify(&self, ip: IpAddr) -> Result<(), Refused> {
        let per_ip = self.registry.per_ip;
        let mut state = self.registry.lock();
        let Some(entry) = state.open.get(&self.id) else {
            return Ok(());
        };
        if entry.shed || entry.ip.is_some() {
            return Ok(());
        }
        if state.count(ip, per_ip)? {
            crate::metrics::connection_shed("max_connections_per_ip");
        }
        if let Some(entry) = state.open.get_mut(&self.id) {
            entry.ip = Some(ip);
        }
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        if let Some(entry) = state.open.remove(&self.id) {
            if entry.shed {
                state.shedding -= 1;
            } else {
                state.uncount(entry.ip);
            }
        }
        drop(state);
        self.registry.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    /// Read and found idle, so it may be shed.
    fn old(slot: &Slot) {
        slot.activity.set_waited();
    }

    #[tokio::test]
    async fn at_the_bound_the_idlest_connection_is_shed() {
        let registry = Arc::new(Registry::new(2, None));
        let (first, _) = registry.take(Some(A), 0).unwrap();
        let (second, _) = registry.take(Some(B), 0).unwrap();
        old(&first);
        old(&second);
        // The first is busy: the second is the one to go.
        let request = first.activity.request(false);
        assert_eq!(registry.room().await, 1);
        assert!(second.activity.is_evicted());
        assert!(!first.activity.is_evicted());
        assert_eq!(registry.open(), 1);
        let (third, _) = registry.take(Some(A), 0).unwrap();
        // One counted connection is busy, the other not read yet: no room
        // until one ends (or the new one is read and found idle).
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(second); // the shed one closing frees nothing counted
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(request);
        drop(first);
        assert_eq!(waiting.await.unwrap(), 0);
        assert!(!third.activity.is_evicted());
    }

    #[test]
    fn a_connection_just_accepted_is_not_shed() {
        let registry = Arc::new(Registry::new(1, None));
        let (fresh, _) = registry.take(Some(A), 0).unwrap();
        assert!(!registry.shed_one());
        old(&fresh);
        assert!(registry.shed_one());
        assert!(fresh.activity.is_evicted());
    }

    #[tokio::test]
    async fn over_the_per_ip_bound_its_own_idle_one_goes_or_the_new_one_is_refused() {
        let registry = Arc::new(Registry::new(100, Some(2)));
        let (a1, _) = registry.take(Some(A), 0).unwrap();
        let (a2, _) = registry.take(Some(A), 0).unwrap();
        let (b1, _) = registry.take(Some(B), 0).unwrap();
        for slot in [&a1, &a2, &b1] {
            old(slot);
        }
        let _busy = a2.activity.request(false);
        let (a3, shed) = registry.take(Some(A), 0).unwrap();
        assert!(shed);
        assert!(a1.activity.is_evicted(), "A's idle one went");
        assert!(!b1.activity.is_evicted(), "not another IP's");
        let busy3 = a3.activity.request(false);
        assert_eq!(registry.take(Some(A), 0).unwrap_err(), Refused::PerIp);
        drop(a1);
        assert_eq!(registry.take(Some(A), 0).unwrap_err(), Refused::PerIp);
        drop(busy3);
        drop(a3);
        assert!(registry.take(Some(A), 0).is_ok());
    }

    /// Behind the PROXY protocol: not counted per IP until identified,
    /// then as the client it is; the bound holds for identified ones.
    #[tokio::test]
    async fn a_connection_identified_later_counts_as_its_client() {
        let registry = Arc::new(Registry::new(100, Some(1)));
        let (first, _) = registry.take(None, 0).unwrap();
        let (second, _) = registry.take(None, 0).unwrap();
        first.identify(A).unwrap();
        let _busy = first.activity.request(false);
        assert_eq!(second.identify(A).unwrap_err(), Refused::PerIp);
        second.identify(B).unwrap();
        assert_eq!(registry.take(Some(B), 0).unwrap_err(), Refused::PerIp);
        drop(first);
        assert!(registry.take(Some(A), 0).is_ok());
    }
}
