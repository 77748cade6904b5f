//! The handshake phase: validation of a claimed handshake, its
//! translation into the upgrade request a backend gets, and the answer the
//! client gets once the backend said yes. What a handshake *is* (its
//! detection, header names and keys) is shared vocabulary, in
//! `crate::opening`.

mod respond;
pub(crate) mod translate;
mod validate;

pub(crate) use self::respond::client_head;
pub(crate) use self::translate::{Translation, backend_request};
pub(crate) use self::validate::{Invalid, validate, validate_http2};
