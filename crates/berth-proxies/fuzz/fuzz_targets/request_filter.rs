//! Fuzzes the socket proxy's whole pure request filter: request-target
//! normalisation, rule matching, query and upgrade checks, and the strict
//! JSON body policy. The input is `METHOD TARGET`, header lines, an empty
//! line, then the body (see `berth_proxies::socket::filter_raw`).
//!
//! Beyond "never panics", `filter_raw` asserts that whatever is allowed is
//! forwarded in a canonical form that parses back to itself.
#![no_main]

use std::sync::LazyLock;

use berth_proxies::socket::{Filter, Policy, filter_raw};
use libfuzzer_sys::fuzz_target;

static FILTER: LazyLock<Filter> =
    LazyLock::new(|| Filter::new(Policy::default()).expect("the built-in policy is valid"));

fuzz_target!(|data: &[u8]| {
    let _ = filter_raw(&FILTER, data);
});
