//! The `berth` binary's configuration commands, and the reference pages
//! of docs/reference/ that describe its command line, its configuration and
//! its container labels: they must name everything the code has.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/berth.example.toml"
    ))
    .unwrap()
}

/// A folder with the example config and the files it names.
fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.toml"), example()).unwrap();
    std::fs::write(dir.path().join("app.pem"), "not read by config check").unwrap();
    std::fs::write(
        dir.path().join("webhook.secret"),
        "4c1f0e6b2d8a97f3e5b0c2d4\n",
    )
    .unwrap();
    dir
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let dir = example_dir();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("configuration OK: 1 pool(s), 1 scale set(s)"),
        "{stdout}"
    );
    // The example pins its image by digest, so there is no warning.
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `config check` reaches every Docker host: one that answers is printed
/// with its engine, one that does not is named and fails the check (69);
/// `--offline` checks the file only.
#[test]
fn config_check_reaches_every_docker_host() {
    let dir = example_dir();
    let fleet = example()
        + "\n[[docker_host]]\nname = \"here\"\nurl = \"unix:///var/run/docker.sock\"\nlabels = [\"zone-a\"]\nmax_runners = 3\n"
        + "\n[[docker_host]]\nname = \"gone\"\nurl = \"unix:///nonexistent/docker.sock\"\n";
    std::fs::write(dir.path().join("berth.toml"), fleet).unwrap();
    let check = |extra: &[&str]| {
        berth()
            .args(["config", "check", "--config", "berth.toml"])
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap()
    };
    let out = check(&[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(69), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 docker host(s)"), "{stdout}");
    assert!(
        stdout.contains("docker host `here` (unix:///var/run/docker.sock): Docker ")
            && stdout.contains("3 slot(s), labels [zone-a]"),
        "{stdout}"
    );
    assert!(
        stderr.contains("docker host `gone` (unix:///nonexistent/docker.sock) does not answer"),
        "{stderr}"
    );
    let out = check(&["--offline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("docker host `here`"));
}

#[test]
fn config_check_names_the_key_and_the_file_and_exits_64() {
    let dir = example_dir();
    let broken = example()
        .replace("max_runners = 10", "max_runners = 0")
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"nowhere\"");
    std::fs::write(dir.path().join("berth.toml"), broken).unwrap();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("berth.toml: `pool[0].max_runners`: must be at least 1"),
        "{stderr}"
    );
    assert!(stderr.contains("berth.toml: `server.listen`"), "{stderr}");

    // `berth serve` refuses the same file the same way.
    let out = berth()
        .args(["serve", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`pool[0].max_runners`"));
}

#[test]
fn environment_variables_override_and_are_named_in_errors() {
    let dir = example_dir();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .env("BERTH_DISPATCH__GLOBAL_MAX_RUNNERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable BERTH_DISPATCH__GLOBAL_MAX_RUNNERS"),
        "{stderr}"
    );

    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .env("BERTH_STORE__URL", "postgres://berth@db/berth")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("store postgres://berth@db/berth"));
}

#[test]
fn an_unpinned_image_is_a_warning() {
    let dir = example_dir();
    let unpinned = example().replace(
        "ghcr.io/acme/berth-worker@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "ubuntu:latest",
    );
    std::fs::write(dir.path().join("berth.toml"), unpinned).unwrap();
    let out = berth()
        .args(["config", "check", "--config", "berth.toml"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning")
            && stderr.contains("`pool[0].image`")
            && stderr.contains("neither pinned by digest"),
        "{stderr}"
    );
}

#[test]
fn token_create_prints_once_and_stores_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("berth.db");
    let out = berth()
        .args([
            "token", "create", "--scope", "delegate", "--name", "proxy-1",
        ])
        .env_clear()
        .env("BERTH_STORE__URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("berth_"), "{token}");
    let raw = std::fs::read(&db).unwrap();
    let wal = std::fs::read(dir.path().join("berth.db-wal")).unwrap_or_default();
    let hay = [raw, wal].concat();
    assert!(
        !hay.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token itself was stored"
    );
    let hash = berth::api::auth::hash_token(&token);
    assert!(
        hay.windows(hash.len()).any(|w| w == hash.as_bytes()),
        "its hash was not stored"
    );

    let out = berth()
        .args(["token", "create", "--scope", "root"])
        .env_clear()
        .env("BERTH_STORE__URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn token_create_takes_an_expiry_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("berth.db").display());
    let before = time::OffsetDateTime::now_utc();
    let out = berth()
        .args(["token", "create", "--scope", "read", "--expires-in", "90d"])
        .env_clear()
        .env("BERTH_STORE__URL", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("expires"), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let stored = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = berth::store::Store::connect(&url).await.unwrap();
        let found = store
            .api_token_find_by_hash(&berth::api::auth::hash_token(&token))
            .await
            .unwrap();
        store.close().await;
        found.expect("the token is stored")
    });
    let expires_at = stored.expires_at.expect("an expiry");
    let ninety_days = time::Duration::days(90);
    assert!(
        expires_at >= before + ninety_days
            && expires_at <= time::OffsetDateTime::now_utc() + ninety_days,
        "{expires_at}"
    );

    for bad in ["5x", "90", "-1d", "0s"] {
        let out = berth()
            .args(["token", "create", "--scope", "read"])
            .arg(format!("--expires-in={bad}"))
            .env_clear()
            .env("BERTH_STORE__URL", &url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("`{bad}` is not a duration")),
            "{bad}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "no token made for {bad}");
    }
}

/// Long operations show a live status line on a terminal, and only plain
/// timestamped lines when their output is captured.
#[test]
fn worker_image_build_shows_progress_on_a_terminal_and_plain_lines_otherwise() {
    let binary = env!("CARGO_BIN_EXE_berth");
    // `script` gives the command a pseudo-terminal, as an operator's shell does.
    let on_tty = Command::new("script")
        .args(["-qec", &format!("{binary} worker-image build"), "/dev/null"])
        .output()
        .unwrap();
    assert!(on_tty.status.success());
    let tty = String::from_utf8_lossy(&on_tty.stdout);
    assert!(
        tty.contains("connecting to Docker") && tty.contains("\x1b[2K"),
        "a redrawn status line: {tty:?}"
    );
    assert!(tty.contains("image: berth-worker-local:"), "{tty:?}");

    let piped = berth().args(["worker-image", "build"]).output().unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes in captured output: {stderr:?}"
    );
    assert!(!stderr.contains("connecting to Docker"), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with('[') && l.contains("s] ")),
        "timestamped event lines: {stderr:?}"
    );
}

fn repo_file(path: &str) -> String {
    let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

/// Every key the configuration parser accepts, as `section.key`, found by
/// driving `Config`'s own `Deserialize` implementation with a deserializer
/// that records the fields each struct asks for. A key added to
/// `crates/berth/src/config.rs` shows up here with nothing else to update.
mod config_keys {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::fmt;

    use serde::de::value::StrDeserializer;
    use serde::de::{self, DeserializeSeed, Visitor};

    #[derive(Debug)]
    pub struct Error(String);

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    impl de::Error for Error {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Error(msg.to_string())
        }
    }

    /// The leaf keys of `T`: `server.listen`, `pool.name`, … (entries of
    /// a list of tables are named by the list, without an index).
    pub fn of<T: de::DeserializeOwned>() -> BTreeSet<String> {
        let keys = RefCell::new(BTreeSet::new());
        T::deserialize(Tracer {
            path: String::new(),
            keys: &keys,
        })
        .unwrap_or_else(|e| panic!("tracing the configuration's keys: {e}"));
        keys.into_inner()
    }

    /// Answers every request with a plausible value; records the path of
    /// every value that is not a table.
    struct Tracer<'k> {
        path: String,
        keys: &'k RefCell<BTreeSet<String>>,
    }

    impl Tracer<'_> {
        fn leaf(&self) {
            self.keys.borrow_mut().insert(self.path.clone());
        }
    }

    macro_rules! leaf {
        ($($method:ident => |$v:ident| $answer:expr;)*) => {
            $(
                fn $method<V: Visitor<'de>>(self, $v: V) -> Result<V::Value, Error> {
                    self.leaf();
                    $answer
                }
            )*
        };
    }

    impl<'de> de::Deserializer<'de> for Tracer<'_> {
        type Error = Error;

        leaf! {
            // Untagged enums (a size: `4096` or `"4g"`) buffer any value.
            deserialize_any => |v| v.visit_u64(1);
            deserialize_bool => |v| v.visit_bool(false);
            deserialize_i8 => |v| v.visit_i64(1);
            deserialize_i16 => |v| v.visit_i64(1);
            deserialize_i32 => |v| v.visit_i64(1);
            deserialize_i64 => |v| v.visit_i64(1);
            deserialize_u8 => |v| v.visit_u64(1);
            deserialize_u16 => |v| v.visit_u64(1);
            deserialize_u32 => |v| v.visit_u64(1);
            deserialize_u64 => |v| v.visit_u64(1);
            deserialize_f32 => |v| v.visit_f64(1.0);
            deserialize_f64 => |v| v.visit_f64(1.0);
            deserialize_char => |v| v.visit_char('a');
            // A string that parses as every string-like type of the
            // configuration (a pool's scope is the pickiest).
            deserialize_str => |v| v.visit_str("org:a");
            deserialize_string => |v| v.visit_str("org:a");
            deserialize_bytes => |v| v.visit_bytes(b"a");
            deserialize_byte_buf => |v| v.visit_bytes(b"a");
            deserialize_unit => |v| v.visit_unit();
            deserialize_identifier => |v| v.visit_str("a");
            deserialize_ignored_any => |v| v.visit_unit();
            deserialize_map => |v| v.visit_map(NoEntries);
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            self.leaf();
            v.visit_unit()
        }

        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_newtype_struct(self)
        }

        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_seq(One(Some(self)))
        }

        fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
            v.visit_seq(One(Some(self)))
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_seq(One(Some(self)))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            v.visit_map(Fields {
                tracer: self,
                fields: fields.iter(),
                current: None,
            })
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            v: V,
        ) -> Result<V::Value, Error> {
            self.leaf();
            let first = variants
                .first()
                .ok_or_else(|| Error(format!("enum {name} has no variants")))?;
            v.visit_enum(UnitVariant(first))
        }
    }

    /// A list of one element.
    struct One<'k>(Option<Tracer<'k>>);

    impl<'de> de::SeqAccess<'de> for One<'_> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            self.0.take().map(|t| seed.deserialize(t)).transpose()
        }
    }

    /// A table with every field its struct names.
    struct Fields<'k> {
        tracer: Tracer<'k>,
        fields: std::slice::Iter<'static, &'static str>,
        current: Option<&'static str>,
    }

    impl<'de> de::MapAccess<'de> for Fields<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(&field) = self.fields.next() else {
                return Ok(None);
            };
            self.current = Some(field);
            seed.deserialize(StrDeserializer::<Error>::new(field))
                .map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let field = self.current.take().expect("a key before its value");
            let path = if self.tracer.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.tracer.path)
            };
            seed.deserialize(Tracer {
                path,
                keys: self.tracer.keys,
            })
        }
    }

    struct NoEntries;

    impl<'de> de::MapAccess<'de> for NoEntries {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            _seed: K,
        ) -> Result<Option<K::Value>, Error> {
            Ok(None)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            _seed: V,
        ) -> Result<V::Value, Error> {
            Err(Error("no entries".into()))
        }
    }

    /// The first variant of an enum, which must be a unit variant (the
    /// configuration's enums are words: `pull_policy`, `listener`).
    struct UnitVariant(&'static str);

    impl<'de> de::EnumAccess<'de> for UnitVariant {
        type Error = Error;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
            let value = seed.deserialize(StrDeserializer::<Error>::new(self.0))?;
            Ok((value, self))
        }
    }

    impl<'de> de::VariantAccess<'de> for UnitVariant {
        type Error = Error;

        fn unit_variant(self) -> Result<(), Error> {
            Ok(())
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            _seed: T,
        ) -> Result<T::Value, Error> {
            Err(Error(format!("`{}` is not a unit variant", self.0)))
        }

        fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, Error> {
            Err(Error(format!("`{}` is not a unit variant", self.0)))
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            _fields: &'static [&'static str],
            _v: V,
        ) -> Result<V::Value, Error> {
            Err(Error(format!("`{}` is not a unit variant", self.0)))
        }
    }
}

/// The key rows of docs/reference/configuration.md: `section.key` → the
/// environment variable cell. Sections are `## `[name]`` (a table) or
/// `## `[[name]]`` (a list of tables) headings; a key row's first cell is
/// the key in backticks.
fn reference_config_rows() -> BTreeMap<String, (bool, String)> {
    let text = repo_file("docs/reference/configuration.md");
    let mut rows = BTreeMap::new();
    let mut section: Option<(String, bool)> = None;
    let mut lists: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            section = line
                .strip_prefix("## `[")
                .and_then(|h| h.strip_suffix("]`"))
                .map(
                    |name| match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
                        Some(list) => (list.to_string(), true),
                        // A table inside a list's entries (`[pool.containers]`)
                        // is part of the list.
                        None => {
                            let parent = name.split('.').next().unwrap_or(name);
                            (name.to_string(), lists.contains(parent))
                        }
                    },
                );
            if let Some((name, true)) = &section {
                lists.insert(name.clone());
            }
            continue;
        }
        let Some((name, is_list)) = &section else {
            continue;
        };
        let line = line.replace("\\|", "\u{1}");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(key) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`')?.strip_suffix('`'))
        else {
            continue;
        };
        assert!(cells.len() >= 7, "configuration.md: a short row: {line}");
        let full = format!("{name}.{key}");
        let env = cells[4].to_string();
        assert!(
            rows.insert(full.clone(), (*is_list, env)).is_none(),
            "configuration.md: `{full}` has two rows"
        );
    }
    rows
}

/// Every `section.key` assignment in the example file, commented out or
/// not (`# tls_cert = …` documents a key with no default).
fn example_keys_with_commented() -> BTreeSet<String> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in example().lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let inner = inner.trim_matches(|c| c == '[' || c == ']');
            if inner.split('.').all(is_name) {
                section = inner.to_string();
            }
            continue;
        }
        if let Some((key, _)) = line.split_once(" =")
            && is_name(key.trim())
            && !section.is_empty()
        {
            keys.insert(format!("{section}.{}", key.trim()));
        }
    }
    keys
}

/// The keys the example file sets (not commented out), read as TOML.
fn example_keys_set() -> BTreeSet<String> {
    let table: toml::Table = toml::from_str(&example()).expect("the example is TOML");
    let mut keys = BTreeSet::new();
    for (section, value) in &table {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(|i| i.as_table()).collect(),
            other => panic!("the example sets `{section}` = {other} outside a section"),
        };
        for t in tables {
            keys.extend(t.keys().map(|k| format!("{section}.{k}")));
        }
    }
    keys
}

#[test]
fn the_configuration_reference_the_example_and_the_parser_name_the_same_keys() {
    let parsed = config_keys::of::<berth::config::Config>();
    // The tracer itself works: a key of each kind of table is found.
    for key in [
        "server.listen",
        "pool.memory",
        "scale_set.listener",
        "orchestrator.token",
    ] {
        assert!(parsed.contains(key), "{key} not traced: {parsed:?}");
    }
    let rows = reference_config_rows();
    let documented: BTreeSet<String> = rows.keys().cloned().collect();

    let undocumented: Vec<_> = parsed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys the parser accepts that docs/reference/configuration.md does not document: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&parsed).collect();
    assert!(
        unknown.is_empty(),
        "keys docs/reference/configuration.md documents that the parser does not accept: {unknown:?}"
    );

    let set = example_keys_set();
    let not_in_reference: Vec<_> = set.difference(&documented).collect();
    assert!(
        not_in_reference.is_empty(),
        "keys of deploy/berth.example.toml missing from docs/reference/configuration.md: {not_in_reference:?}"
    );
    let in_example = example_keys_with_commented();
    assert!(set.is_subset(&in_example), "{set:?} vs {in_example:?}");
    let not_in_example: Vec<_> = parsed.difference(&in_example).collect();
    assert!(
        not_in_example.is_empty(),
        "keys missing from deploy/berth.example.toml (set or commented out): {not_in_example:?}"
    );
    let stale: Vec<_> = in_example.difference(&parsed).collect();
    assert!(
        stale.is_empty(),
        "deploy/berth.example.toml names keys the parser does not accept: {stale:?}"
    );

    // The environment column: BERTH_<SECTION>__<KEY> for tables; lists of
    // tables cannot be set from the environment.
    for (key, (is_list, env)) in &rows {
        let (section, name) = key.split_once('.').unwrap();
        if *is_list {
            assert!(!env.contains("BERTH_"), "`{key}`: {env}");
        } else {
            let want = format!(
                "`BERTH_{}__{}`",
                section.to_ascii_uppercase(),
                name.to_ascii_uppercase()
            );
            assert_eq!(env, &want, "the environment variable of `{key}`");
        }
    }
}

/// A reference page's section: the lines after its heading, up to the
/// next `##` or `###` heading.
fn section(text: &str, heading: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect();
    Some(body.join("\n"))
}

#[test]
fn every_command_and_flag_is_in_the_cli_reference() {
    use clap::CommandFactory;

    fn leaves(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            if sub.has_subcommands() {
                leaves(sub, &path, out);
            } else {
                out.push((path, sub.clone()));
            }
        }
    }

    let doc = repo_file("docs/reference/cli.md");
    let mut commands = Vec::new();
    leaves(&berth::cli::Cli::command(), "berth", &mut commands);
    assert!(
        commands.len() >= 15,
        "{:?}",
        commands.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    let mut missing = Vec::new();
    for (path, cmd) in &commands {
        let Some(text) = section(&doc, &format!("### `{path}`")) else {
            missing.push(format!("a section \"### `{path}`\""));
            continue;
        };
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            // What the section must hold, and how to name it if it does not:
            // `--long` (perhaps with a value after it), `-s`, or a positional
            // argument's value name.
            let mut needles = Vec::new();
            if let Some(long) = arg.get_long() {
                needles.push((format!("`--{long}"), format!("--{long}")));
            }
            if let Some(short) = arg.get_short() {
                needles.push((format!("`-{short}`"), format!("-{short}")));
            }
            if needles.is_empty() {
                let value = arg
                    .get_value_names()
                    .and_then(|v| v.first().map(|n| n.to_string()))
                    .unwrap_or_else(|| id.to_ascii_uppercase());
                needles.push((format!("`{value}`"), value));
            }
            for (needle, name) in needles {
                if !text.contains(&needle) {
                    missing.push(format!("`{name}` in \"### `{path}`\""));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference/cli.md lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_container_label_is_in_the_labels_reference() {
    fn walk(dir: &std::path::Path, labels: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, labels);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for line in source.lines() {
                    let line = line.trim();
                    if line.starts_with("pub const LABEL_") && line.contains(": &str = \"") {
                        let value = line.split('"').nth(1).unwrap();
                        labels.insert(value.to_string());
                    }
                }
            }
        }
    }
    let mut labels = BTreeSet::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut labels,
    );
    for known in [
        berth::docker::controller::LABEL_MANAGED,
        berth::docker::controller::LABEL_JOB,
        berth::context::LABEL_INSTANCE,
        berth::scaleset::LABEL_SCALE_SET,
    ] {
        assert!(labels.contains(known), "{known} not found in {labels:?}");
    }
    let doc = repo_file("docs/reference/labels.md");
    let missing: Vec<_> = labels
        .iter()
        .filter(|l| !doc.contains(&format!("| `{l}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "labels missing from docs/reference/labels.md: {missing:?}"
    );
    assert!(doc.contains(&format!("`{}`", berth::docker::controller::NAME_PREFIX)));
}
