//! The frame-header parser of the relay on arbitrary bytes cut at
//! arbitrary places: it must not panic, and every way of feeding the same
//! bytes must agree (see `wsproxy::fuzzing::frame_tracker`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    // The first byte picks the chunk sizes; the rest is the stream.
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    wsproxy::fuzzing::frame_tracker(data, seed);
});
