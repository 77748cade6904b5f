//! Examples for wsproxy: see the files under `examples/`.
