//! The config loader: any file text loads or fails with a message, never
//! a panic; what loads is valid.
#![no_main]

use dongdong_server::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = Config::from_toml_str(text)
    {
        assert!(config.validate().is_ok());
    }
});
