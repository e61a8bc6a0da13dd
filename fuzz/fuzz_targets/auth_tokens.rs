#![no_main]
//! libFuzzer entry for thaw_fuzz's `auth_tokens` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("auth_tokens") {
        target(data);
    }
});
