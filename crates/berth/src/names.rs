//! GitHub's names, and berth's bounds on the text clients send.
//!
//! Everything a client sends that berth stores, shows or puts into a GitHub
//! URL passes here first:
//!
//! * **Identifiers are checked and refused** when GitHub would never send
//!   them: an owner or repository name outside GitHub's rules (so `../x`
//!   or `acme/..` never reaches a URL path), a label that is blank or over
//!   [`MAX_LABEL_CHARS`], more than [`MAX_LABELS`] labels, a delivery id
//!   that is not a short token.
//! * **Free text is truncated**, never refused: a workflow or job name over
//!   [`MAX_TEXT_CHARS`] characters is cut there (with `…` appended), so a
//!   real job is not lost for a long name while an attacker cannot make
//!   every job list megabytes long.
//!
//! docs/reference/http-api.md states the same rules.

/// GitHub logins are at most 39 characters; Enterprise Managed Users add a
/// `_shortcode` suffix, and GHES may differ, so berth allows up to 100.
pub const MAX_OWNER_CHARS: usize = 100;
/// GitHub's limit on repository names.
pub const MAX_REPOSITORY_NAME_CHARS: usize = 100;
/// Workflow and job names are cut to this many characters.
pub const MAX_TEXT_CHARS: usize = 1024;
/// A label's length at most.
pub const MAX_LABEL_CHARS: usize = 256;
/// Labels of one job at most.
pub const MAX_LABELS: usize = 100;
/// GitHub's delivery ids are UUIDs (36 characters).
pub const MAX_DELIVERY_ID_CHARS: usize = 100;

/// An account (user or organization) name as GitHub allows it: letters,
/// digits, `-` and `_` (managed users), not starting with `-` or `_`.
pub fn check_owner(owner: &str) -> Result<(), String> {
    let ok = !owner.is_empty()
        && owner.chars().count() <= MAX_OWNER_CHARS
        && owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        && !owner.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a GitHub account name (letters, digits, `-` and `_`, at most {MAX_OWNER_CHARS})",
            shorten(owner)
        ))
    }
}

/// A repository name as GitHub allows it: letters, digits, `.`, `-`, `_`,
/// at most 100, and neither `.` nor `..`.
pub fn check_repository_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_REPOSITORY_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a GitHub repository name (letters, digits, `.`, `-` and `_`, at most {MAX_REPOSITORY_NAME_CHARS}, not `.` or `..`)",
            shorten(name)
        ))
    }
}

/// `owner/name`, split, both parts checked.
pub fn split_repository(full: &str) -> Result<(&str, &str), String> {
    let (owner, name) = full
        .split_once('/')
        .ok_or_else(|| format!("{:?} is not `owner/name`", shorten(full)))?;
    check_owner(owner)?;
    check_repository_name(name)?;
    Ok((owner, name))
}

/// An `X-GitHub-Delivery` id: letters, digits and `-`, at most 100.
pub fn check_delivery_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DELIVERY_ID_CHARS
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "X-GitHub-Delivery must be letters, digits and `-`, at most {MAX_DELIVERY_ID_CHARS} (GitHub sends a UUID)"
        ))
    }
}

/// Labels as GitHub sends them: at most [`MAX_LABELS`], none blank or over
/// [`MAX_LABEL_CHARS`].
pub fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    if labels
        .iter()
        .any(|l| l.chars().all(is_blank) || l.chars().count() > MAX_LABEL_CHARS)
    {
        return Err(format!(
            "labels must not be blank or longer than {MAX_LABEL_CHARS} characters"
        ));
    }
    Ok(())
}

/// Spaces, tabs and line breaks: a label made only of them is blank. (An
/// explicit set, which the API description's pattern states exactly.)
pub fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Free text cut to [`MAX_TEXT_CHARS`] characters (`…` marks the cut).
pub fn bounded_text(text: String) -> String {
    match cut_at(&text, MAX_TEXT_CHARS) {
        Some(cut) => cut,
        None => text,
    }
}

/// `text` cut to `chars` characters with `…` appended, on a character
/// boundary; `None` when it is not longer than that.
pub fn cut_at(text: &str, chars: usize) -> Option<String> {
    let (end, _) = text.char_indices().nth(chars)?;
    Some(format!("{}…", &text[..end]))
}

/// A name as it may appear in an error message: at most 64 characters.
fn shorten(text: &str) -> String {
    cut_at(text, 64).unwrap_or_else(|| text.to_string())
}

/// A Docker host's name (`[[docker_host]] name`): 1 to 63 letters, digits,
/// `-`, `_` and `.`, so it is safe in a URL path segment, a container label
/// and a metric label.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != ".."
}

/// A host label (`gpu`, `zone-a`): not blank, at most [`MAX_LABEL_CHARS`].
pub fn is_label(label: &str) -> bool {
    !label.chars().all(is_blank) && label.chars().count() <= MAX_LABEL_CHARS
}

/// Whether `pattern` (with `*` matching any run of characters) matches
/// all of `text`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_follow_githubs_rules() {
        for good in [
            "acme/widgets",
            "octo-org/hello.world",
            "a/b",
            "mona_acme/x_y-z",
            "Acme/.github",
        ] {
            assert!(split_repository(good).is_ok(), "{good}");
        }
        for bad in [
            "../x",
            "acme/..",
            "./.",
            "acme/.",
            "acme/a b",
            "acme/a/b",
            "acme",
            "/x",
            "acme/",
            "-acme/x",
            "ac%2fme/x",
            "acme/x?y",
            "acme/wid\u{0}gets",
        ] {
            assert!(split_repository(bad).is_err(), "{bad}");
        }
        assert!(split_repository(&format!("acme/{}", "x".repeat(101))).is_err());
        assert!(split_repository(&format!("{}/x", "o".repeat(101))).is_err());
        let err = split_repository(&format!("{}/x", "o".repeat(5000))).unwrap_err();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn delivery_ids_are_short_tokens() {
        assert!(check_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        assert!(check_delivery_id(&"a".repeat(101)).is_err());
        assert!(check_delivery_id("a b").is_err());
        assert!(check_delivery_id("").is_err());
    }

    #[test]
    fn free_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_text("build".into()), "build");
        let long = "é".repeat(MAX_TEXT_CHARS + 10);
        let cut = bounded_text(long);
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(MAX_TEXT_CHARS);
        assert_eq!(bounded_text(exact.clone()), exact);
    }

    #[test]
    fn labels_are_bounded() {
        assert!(check_labels(&["self-hosted".into(), "linux".into()]).is_ok());
        assert!(check_labels(&[" ".into()]).is_err());
        assert!(check_labels(&["x".repeat(257)]).is_err());
        assert!(check_labels(&vec!["l".to_string(); 101]).is_err());
    }
}
