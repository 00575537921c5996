#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_core::fuzzing::rate_limit_key(data));
