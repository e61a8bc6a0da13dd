#![no_main]
//! libFuzzer entry for thaw_fuzz's `snapshot_requests` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("snapshot_requests") {
        target(data);
    }
});
