//! Property tests of request-target normalisation and of the filter's
//! decisions under every rewriting a client could use to sneak past it.

use berth_proxies::socket::target::Target;
use berth_proxies::socket::{Filter, Policy, filter_raw};
use http::HeaderMap;
use proptest::prelude::*;

fn filter() -> Filter {
    Filter::new(Policy::default()).unwrap()
}

/// Targets the default policy allows (no scope check needed to decide).
const ALLOWED: &[(&str, &str)] = &[
    ("GET", "/_ping"),
    ("HEAD", "/_ping"),
    ("GET", "/version"),
    ("GET", "/info"),
    ("GET", "/images/json"),
    ("GET", "/images/busybox:latest/json"),
    ("POST", "/containers/create"),
    ("GET", "/containers/berth-0a1b/json"),
    ("POST", "/containers/berth-0a1b/start"),
    ("POST", "/containers/berth-0a1b/wait"),
    ("POST", "/containers/berth-0a1b/stop"),
    ("POST", "/containers/berth-0a1b/kill"),
    ("DELETE", "/containers/berth-0a1b"),
    ("GET", "/containers/berth-0a1b/logs"),
    ("GET", "/networks"),
    ("POST", "/networks/create"),
    ("DELETE", "/networks/berth"),
    ("POST", "/networks/berth/connect"),
    ("POST", "/networks/berth/disconnect"),
    ("POST", "/containers/berth-0a1b/exec"),
    ("GET", "/exec/0a1b2c/json"),
    ("POST", "/exec/0a1b2c/resize"),
    ("POST", "/volumes/create"),
    ("GET", "/volumes/berth-job-1"),
    ("DELETE", "/volumes/berth-job-1"),
    ("DELETE", "/images/berth-job-x:1"),
];

/// Targets the default policy denies whatever the object.
/// (Some only without the labels, the upgrade or the filter they need.)
const DENIED: &[(&str, &str)] = &[
    ("POST", "/exec/abc/start"),
    ("POST", "/build"),
    ("GET", "/volumes"),
    ("POST", "/volumes/prune"),
    ("DELETE", "/exec/abc"),
    ("POST", "/images/berth-job-x/tag"),
    ("POST", "/commit"),
    ("POST", "/swarm/init"),
    ("GET", "/services"),
    ("GET", "/secrets"),
    ("GET", "/plugins"),
    ("PUT", "/containers/berth-0a1b/archive"),
    ("POST", "/containers/berth-0a1b/update"),
    ("POST", "/images/load"),
    ("POST", "/networks/berth/update"),
];

fn decide(method: &str, target: &str) -> Result<(String, String), String> {
    filter()
        .check_head(method, target, &HeaderMap::new())
        .map(|p| (p.rule.clone(), p.forward(None)))
        .map_err(|d| d.rule)
}

/// Rewrites a target the ways a client can without changing its meaning
/// to Docker: percent-encode letters and digits, double slashes, add a
/// trailing slash, add a version prefix.
fn rewrite(
    target: &str,
    encode: &[bool],
    doubles: &[bool],
    trailing: bool,
    version: bool,
) -> String {
    let mut out = String::new();
    if version {
        out.push_str("/v1.41");
    }
    for (i, c) in target.chars().enumerate() {
        if c == '/' && doubles.get(i).copied().unwrap_or(false) {
            out.push('/');
        }
        if c.is_ascii_alphanumeric() && encode.get(i).copied().unwrap_or(false) {
            out.push_str(&format!("%{:02X}", c as u8));
        } else {
            out.push(c);
        }
    }
    if trailing {
        out.push('/');
    }
    out
}

fn flags() -> impl Strategy<Value = Vec<bool>> {
    proptest::collection::vec(any::<bool>(), 64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A canonical target parses back to itself.
    #[test]
    fn canonical_form_is_a_fixed_point(raw in r"(/{1,2}[a-zA-Z0-9._:@%\\-]{0,10}){0,6}/?(\?[a-zA-Z0-9=&%+;?._-]{0,24})?") {
        if let Ok(t) = Target::parse(&raw) {
            let canonical = t.path_and_query();
            prop_assert_eq!(Target::parse(&canonical), Ok(t.clone()));
            let path = t.path();
            prop_assert!(!path.contains("//"), "{}", path);
            prop_assert!(!path.ends_with('/'), "{}", path);
            prop_assert!(!path.contains('%'), "{}", path);
            prop_assert!(path.split('/').skip(1).all(|s| s != "." && s != ".." && !s.is_empty()), "{}", path);
        }
    }

    /// Encoding, doubled slashes, a trailing slash and a version prefix do
    /// not change what an allowed request is, nor where it goes.
    #[test]
    fn rewriting_an_allowed_target_keeps_its_decision(
        i in 0..ALLOWED.len(), encode in flags(), doubles in flags(), trailing: bool, version: bool
    ) {
        let (method, target) = ALLOWED[i];
        let plain = decide(method, target);
        prop_assert!(plain.is_ok(), "{} {} {:?}", method, target, plain);
        let rewritten = rewrite(target, &encode, &doubles, trailing, version);
        let got = decide(method, &rewritten);
        let (rule, forward) = got.clone().map_err(|e| TestCaseError::fail(format!("{rewritten}: {e}")))?;
        prop_assert_eq!(&rule, &plain.as_ref().unwrap().0);
        let expected = if version { format!("/v1.41{}", plain.unwrap().1) } else { plain.unwrap().1 };
        prop_assert_eq!(forward, expected, "{}", rewritten);
    }

    /// No rewriting turns a denied endpoint into an allowed one.
    #[test]
    fn rewriting_a_denied_target_keeps_it_denied(
        i in 0..DENIED.len(), encode in flags(), doubles in flags(), trailing: bool, version: bool
    ) {
        let (method, target) = DENIED[i];
        let rewritten = rewrite(target, &encode, &doubles, trailing, version);
        prop_assert!(decide(method, &rewritten).is_err(), "{} {}", method, rewritten);
    }

    /// An encoded separator, dot, percent or NUL anywhere is refused.
    #[test]
    fn encoded_separators_are_refused(
        i in 0..ALLOWED.len(), at in 0usize..64,
        bad in prop::sample::select(vec!["%2F", "%2f", "%5C", "%5c", "%2E", "%2e", "%00", "%25", "%3F", "%23"])
    ) {
        let (method, target) = ALLOWED[i];
        let at = at % (target.len() + 1);
        let mut t = target.to_owned();
        t.insert_str(at, bad);
        if !t.starts_with('/') {
            t.insert(0, '/');
        }
        let decided = decide(method, &t);
        prop_assert_eq!(decided, Err("request-target".to_owned()), "{}", t);
    }

    /// `.` and `..` segments are refused, encoded or not.
    #[test]
    fn dot_segments_are_refused(
        i in 0..ALLOWED.len(), at in 0usize..8,
        dots in prop::sample::select(vec!["/..", "/.", "/%2e%2e", "/.%2e", "/%2E"])
    ) {
        let (method, target) = ALLOWED[i];
        let slashes: Vec<usize> = target.match_indices('/').map(|(i, _)| i).collect();
        let pos = slashes[at % slashes.len()];
        let mut t = target.to_owned();
        t.insert_str(pos, dots);
        prop_assert_eq!(decide(method, &t), Err("request-target".to_owned()), "{}", t);
    }

    /// Route words are case-sensitive, as Docker's router is: a case
    /// variant of a fixed segment matches no rule.
    #[test]
    fn case_variants_of_route_words_are_denied(i in 0..ALLOWED.len(), flips in flags()) {
        let (method, target) = ALLOWED[i];
        let mut changed = false;
        let mut out = String::new();
        let mut segment = 0;
        for (j, c) in target.chars().enumerate() {
            if c == '/' { segment += 1; }
            // The object segment (containers/<id>, networks/<id>, images/<ref>,
            // volumes/<name>, exec/<id>) keeps its case.
            let object_segment = segment == 2 && target.matches('/').count() >= 2
                && ["/containers/", "/networks/", "/images/", "/volumes/", "/exec/"]
                    .iter()
                    .any(|p| target.starts_with(p))
                && !target.ends_with("/create") && target != "/images/json";
            if c.is_ascii_alphabetic() && flips[j % flips.len()] && !object_segment {
                out.push(if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
                changed = true;
            } else {
                out.push(c);
            }
        }
        if changed {
            prop_assert!(decide(method, &out).is_err(), "{} {}", method, out);
        }
    }

    /// A repeated query parameter is refused, however it is spelled.
    #[test]
    fn repeated_parameters_are_refused(encode_first: bool, encode_second: bool, v1 in "[a-z0-9]{0,6}", v2 in "[a-z0-9]{0,6}") {
        let name = |e: bool| if e { "%66orce".to_owned() } else { "force".to_owned() };
        let t = format!("/containers/berth-1?{}={v1}&{}={v2}", name(encode_first), name(encode_second));
        prop_assert_eq!(decide("DELETE", &t), Err("request-target".to_owned()));
    }

    /// The fuzz target's entry point never panics.
    #[test]
    fn the_raw_filter_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = filter_raw(&filter(), &input);
    }

    /// … also on inputs that look like requests.
    #[test]
    fn the_raw_filter_never_panics_on_request_shapes(
        method in prop::sample::select(vec!["GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "X"]),
        target in r"/[a-zA-Z0-9._:@%/?&=+;-]{0,40}",
        body in r#"\{("[A-Za-z]{1,12}":(true|"host"|\[\]|\{\}|1),?){0,4}\}"#
    ) {
        let input = format!("{method} {target}\ncontent-type: application/json\n\n{body}");
        let _ = filter_raw(&filter(), input.as_bytes());
    }
}
