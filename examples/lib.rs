//! Example apps for wsproxy; each `*.rs` file here says how to run it.
