//! End-to-end tests for wsproxy live in `tests/*.rs`.
