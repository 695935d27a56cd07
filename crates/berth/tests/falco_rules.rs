//! deploy/falco/berth_rules.yaml, checked as far as possible without
//! Falco (which has no package for this machine): it is valid YAML of
//! Falco's rule-file shape; every rule has a description, a condition, an
//! output, a Falco priority and the `berth` tag; every field it uses is in
//! deploy/falco/fields.txt (the fields of Falco's reference it relies on);
//! every macro and list it names is defined in the file before its use
//! (the file is self-contained); and every rule is scoped to berth's
//! containers (its condition reaches `container.label[berth.managed]`).

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const PRIORITIES: [&str; 8] = [
    "EMERGENCY",
    "ALERT",
    "CRITICAL",
    "ERROR",
    "WARNING",
    "NOTICE",
    "INFORMATIONAL",
    "DEBUG",
];

/// Falco's condition keywords and operators spelled as words.
const WORDS: [&str; 15] = [
    "and",
    "or",
    "not",
    "in",
    "intersects",
    "pmatch",
    "exists",
    "contains",
    "icontains",
    "bcontains",
    "startswith",
    "bstartswith",
    "endswith",
    "glob",
    "iglob",
];

/// Word operators whose right-hand side is a value.
const COMPARISONS: [&str; 7] = [
    "startswith",
    "endswith",
    "contains",
    "icontains",
    "bcontains",
    "glob",
    "iglob",
];

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op(String),
    Open,
    Close,
    Comma,
    Text,
}

fn tokens(condition: &str) -> Vec<Token> {
    let chars: Vec<char> = condition.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            while i < chars.len() && chars[i] != quote {
                i += 1;
            }
            i += 1;
            out.push(Token::Text);
        } else if c == '(' {
            out.push(Token::Open);
            i += 1;
        } else if c == ')' {
            out.push(Token::Close);
            i += 1;
        } else if c == ',' {
            out.push(Token::Comma);
            i += 1;
        } else if "=!<>".contains(c) {
            let start = i;
            while i < chars.len() && "=!<>".contains(chars[i]) {
                i += 1;
            }
            out.push(Token::Op(chars[start..i].iter().collect()));
        } else {
            let start = i;
            let mut depth = 0;
            while i < chars.len() {
                let c = chars[i];
                if c == '[' {
                    depth += 1;
                } else if c == ']' {
                    depth -= 1;
                } else if depth == 0 && (c.is_whitespace() || "(),=!<>".contains(c)) {
                    break;
                }
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        }
    }
    out
}

fn is_field(word: &str) -> bool {
    ["evt.", "proc.", "user.", "fd.", "container."]
        .iter()
        .any(|p| word.starts_with(p))
}

fn field_name(word: &str) -> &str {
    word.split('[').next().unwrap()
}

/// What a condition names: fields, and the words that must be macros
/// (outside `in (…)` and not a comparison's value).
fn names(condition: &str) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut fields, mut macros, mut in_lists) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let toks = tokens(condition);
    let mut in_depth: Option<usize> = None;
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Token::Open => {
                depth += 1;
                if i > 0
                    && matches!(&toks[i - 1], Token::Word(w) if w == "in" || w == "intersects" || w == "pmatch")
                {
                    in_depth = Some(depth);
                }
            }
            Token::Close => {
                if in_depth == Some(depth) {
                    in_depth = None;
                }
                depth -= 1;
            }
            Token::Word(w) => {
                if is_field(w) {
                    fields.insert(field_name(w).to_owned());
                } else if in_depth.is_some() {
                    in_lists.insert(w.clone());
                } else {
                    // A comparison's value (`fd.typechar = f`, `startswith /etc/`)?
                    let value = i > 0
                        && match &toks[i - 1] {
                            Token::Op(_) => true,
                            Token::Word(p) => COMPARISONS.contains(&p.as_str()),
                            _ => false,
                        };
                    if !WORDS.contains(&w.as_str()) && !value && w.parse::<f64>().is_err() {
                        macros.insert(w.clone());
                    }
                }
            }
            _ => {}
        }
    }
    (fields, macros, in_lists)
}

fn text(item: &Yaml, key: &str) -> Option<String> {
    item[key].as_str().map(str::to_owned)
}

#[test]
fn the_falco_rules_use_known_fields_defined_macros_and_stay_on_berths_workers() {
    let docs = YamlLoader::load_from_str(&repo_file("deploy/falco/berth_rules.yaml"))
        .expect("berth_rules.yaml is valid YAML");
    let items = docs[0].as_vec().expect("a rules file is a list");
    let known_fields: BTreeSet<String> = repo_file("deploy/falco/fields.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut macros: BTreeMap<String, String> = BTreeMap::new();
    let mut lists: BTreeSet<String> = BTreeSet::new();
    let mut used_fields = BTreeSet::new();
    let mut used_names = BTreeSet::new();
    let mut rules = Vec::new();
    for item in items {
        let kinds: Vec<&str> = ["rule", "macro", "list", "required_engine_version"]
            .into_iter()
            .filter(|k| !item[*k].is_badvalue())
            .collect();
        assert_eq!(kinds.len(), 1, "one kind per item: {item:?}");
        let check = |what: &str,
                     condition: &str,
                     macros: &BTreeMap<String, String>,
                     lists: &BTreeSet<String>| {
            let (fields, names_used, in_lists) = names(condition);
            for m in &names_used {
                assert!(
                    macros.contains_key(m),
                    "{what}: `{m}` is not a macro defined before it"
                );
            }
            for l in &in_lists {
                // Inside `in (…)`: a list of this file, or a literal value.
                assert!(
                    !l.starts_with("berth_") || lists.contains(l),
                    "{what}: list `{l}` is not defined before it"
                );
            }
            (fields, names_used, in_lists)
        };
        match kinds[0] {
            "macro" => {
                let name = text(item, "macro").unwrap();
                let condition = text(item, "condition").expect("a macro has a condition");
                let (fields, names_used, in_lists) = check(&name, &condition, &macros, &lists);
                used_fields.extend(fields);
                used_names.extend(names_used);
                used_names.extend(in_lists);
                assert!(
                    name.starts_with("berth_"),
                    "macro `{name}` is not prefixed berth_"
                );
                macros.insert(name, condition);
            }
            "list" => {
                let name = text(item, "list").unwrap();
                assert!(item["items"].as_vec().is_some(), "list `{name}` has items");
                assert!(
                    name.starts_with("berth_"),
                    "list `{name}` is not prefixed berth_"
                );
                lists.insert(name);
            }
            "rule" => {
                let name = text(item, "rule").unwrap();
                for key in ["desc", "condition", "output", "priority"] {
                    assert!(
                        text(item, key).is_some_and(|v| !v.trim().is_empty()),
                        "rule `{name}` lacks {key}"
                    );
                }
                let priority = text(item, "priority").unwrap();
                assert!(
                    PRIORITIES.contains(&priority.as_str()),
                    "rule `{name}`: priority {priority}"
                );
                let tags: Vec<&str> = item["tags"]
                    .as_vec()
                    .expect("tags")
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect();
                assert!(tags.contains(&"berth"), "rule `{name}` lacks the berth tag");
                let condition = text(item, "condition").unwrap();
                let (fields, names_used, in_lists) = check(&name, &condition, &macros, &lists);
                used_fields.extend(fields);
                used_names.extend(names_used.clone());
                used_names.extend(in_lists);
                // The output's %fields.
                let output = text(item, "output").unwrap();
                for part in output.split('%').skip(1) {
                    let field: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "._[]-".contains(*c))
                        .collect();
                    used_fields.insert(field_name(&field).to_owned());
                }
                assert!(
                    output.contains("%container.id"),
                    "rule `{name}`: output lacks container.id (berth maps alerts by it)"
                );
                // Scoped to berth's containers, through its macros.
                let mut expanded = condition.clone();
                for _ in 0..5 {
                    for (m, body) in &macros {
                        expanded = expanded.replace(m.as_str(), &format!("({body})"));
                    }
                }
                assert!(
                    expanded.contains("container.label[berth.managed] = \"true\""),
                    "rule `{name}` is not scoped to berth's containers"
                );
                rules.push(name);
            }
            _ => {}
        }
    }
    let unknown: Vec<_> = used_fields.difference(&known_fields).collect();
    assert!(
        unknown.is_empty(),
        "fields not in deploy/falco/fields.txt: {unknown:?}"
    );
    let unused: Vec<_> = known_fields.difference(&used_fields).collect();
    assert!(
        unused.is_empty(),
        "fields.txt lists fields the rules do not use: {unused:?}"
    );
    for defined in macros.keys().chain(lists.iter()) {
        assert!(
            used_names.contains(defined),
            "`{defined}` is defined but never used"
        );
    }
    // The attacks docs/runtime-security.md maps, one rule at least each.
    assert!(rules.len() >= 8, "{rules:?}");
    let doc = repo_file("docs/runtime-security.md");
    for rule in &rules {
        assert!(
            doc.contains(&format!("`{rule}`")),
            "docs/runtime-security.md does not map `{rule}`"
        );
    }
}

/// The sample alerts in fixtures/falco (the tests post them to berth) are
/// alerts of berth's own rules: each names a rule of the file with that
/// rule's priority, carries only output fields the rule's output has (plus
/// Falco's `evt.time`), and parses with berth's own reader of Falco's
/// format.
#[test]
fn the_sample_alerts_are_alerts_of_berths_rules() {
    let docs = YamlLoader::load_from_str(&repo_file("deploy/falco/berth_rules.yaml")).unwrap();
    let rules: BTreeMap<String, (String, String)> = docs[0]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|item| {
            let name = text(item, "rule")?;
            Some((name, (text(item, "priority")?, text(item, "output")?)))
        })
        .collect();
    let mut samples = Vec::new();
    for file in ["terminal-shell.json", "falcosidekick-batch.json"] {
        let body = repo_file(&format!("fixtures/falco/{file}"));
        let parsed = berth::security::falco::parse_body(body.as_bytes())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let items = match json {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        assert_eq!(parsed.len(), items.len());
        samples.extend(items.into_iter().zip(parsed).map(|(raw, p)| (file, raw, p)));
    }
    assert!(samples.len() >= 3);
    for (file, raw, parsed) in samples {
        let (priority, output) = rules
            .get(&parsed.rule)
            .unwrap_or_else(|| panic!("{file}: `{}` is not a rule of berth's", parsed.rule));
        assert!(
            priority.eq_ignore_ascii_case(parsed.priority.as_str()),
            "{file}: {} has priority {priority}",
            parsed.rule
        );
        assert!(parsed.container_id().is_some(), "{file}: no container id");
        for key in raw["output_fields"].as_object().unwrap().keys() {
            assert!(
                key == "evt.time" || output.contains(&format!("%{key}")),
                "{file}: output field `{key}` is not in the output of `{}`",
                parsed.rule
            );
        }
    }
}
