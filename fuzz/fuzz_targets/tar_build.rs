#![no_main]
//! libFuzzer entry for thaw_fuzz's `tar_build` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("tar_build") {
        target(data);
    }
});
