#![no_main]
//! libFuzzer entry for thaw_fuzz's `registry_reference` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("registry_reference") {
        target(data);
    }
});
