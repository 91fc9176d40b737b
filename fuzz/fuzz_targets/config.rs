//! Config loading: TOML parsing and validation never panic, and a valid config survives a
//! round trip through its own serialization.
#![no_main]

use herald_server::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let again = toml::to_string(&config).expect("a valid config serializes");
    let reread = Config::from_toml(&again).expect("its serialization parses");
    reread.validate().expect("and validates");
});
