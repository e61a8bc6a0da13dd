#![no_main]
//! libFuzzer entry for thaw_fuzz's `autoscale_trace` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("autoscale_trace") {
        target(data);
    }
});
