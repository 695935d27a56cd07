//! Fuzzes the egress proxy's destination normalisation and allowlist
//! decision: arbitrary bytes as a CONNECT authority and as an `http://`
//! authority (default port 80), checked against a small allowlist.
//!
//! Beyond "never panics": whatever parses must print as a canonical form
//! that parses back to the same target, and gets the same decision.
#![no_main]

use std::sync::LazyLock;

use berth_proxies::egress::{Allowlist, parse_authority};
use libfuzzer_sys::fuzz_target;

static LIST: LazyLock<Allowlist> = LazyLock::new(|| {
    Allowlist::from_toml(
        "[[allow]]\ndomain = \"github.com\"\n[[allow]]\ndomain = \"*.githubusercontent.com\"\n[[allow]]\ncidr = \"10.0.0.0/8\"\nports = [8080]\n",
        "fuzz",
    )
    .expect("the fuzz allowlist is valid")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for default_port in [None, Some(80)] {
        if let Ok(target) = parse_authority(text, default_port) {
            let again = parse_authority(&target.to_string(), None)
                .expect("a canonical target parses back");
            assert_eq!(again, target);
            assert_eq!(LIST.check(&again).is_ok(), LIST.check(&target).is_ok());
        }
    }
});
