//! The orchestrator: one claimed handshake, from validation to the spawned
//! tunnel, calling on the phases in turn — [`handshake`](crate::handshake)
//! (validate, translate, respond), [`balance`](crate::balance) (choose),
//! [`connect`](crate::connect) (connect and hand-shake with the backend),
//! [`relay`](crate::relay) and [`tunnels`](crate::tunnels) (the tunnel's
//! life).

mod backend;
mod claim;
mod config;
mod tunnel;

pub(crate) use self::claim::Handshakes;
pub(crate) use self::config::Config;
