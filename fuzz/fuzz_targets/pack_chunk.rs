#![no_main]
//! libFuzzer entry for thaw_fuzz's `pack_chunk` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("pack_chunk") {
        target(data);
    }
});
