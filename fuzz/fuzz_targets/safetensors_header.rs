#![no_main]
//! libFuzzer entry for thaw_fuzz's `safetensors_header` target.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = thaw_fuzz::target("safetensors_header") {
        target(data);
    }
});
