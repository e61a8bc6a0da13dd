#![no_main]
//! libFuzzer entry for thaw_fuzz's `trace` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("trace") {
        target(data);
    }
});
