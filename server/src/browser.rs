//! Debug from the browser: what the browser extension (`browser-extension/`) needs to add a
//! session's header to the developer's requests, derived from the steal's `header_filter`.
//!
//! The extension has a fixed id (the public `key` in its manifest), so its options page has a
//! predictable address; the setup link is that page with the session's header in the fragment
//! (form-encoded `header`, `value`, `filter`; see `browser-extension/src/link.js`). Opening it
//! fills the extension's form; the user chooses the URL patterns and turns the rule on.

use mirrord_protocol::api::BrowserSetup;
use mirrord_protocol::config::{IncomingMode, MirrordConfig};
use regex_syntax::hir::{Hir, HirKind, Look};

/// The extension's id: derived from the `key` in `browser-extension/manifest.json` (the first
/// 128 bits of the SHA-256 of the public key, in the letters a-p). The extension's unit tests
/// check that this constant still matches the manifest.
pub const EXTENSION_ID: &str = "hmjmnnhpoalhfbhncjafhgmdgijcijjh";

/// The options page of the extension.
pub fn options_url() -> String {
    format!("chrome-extension://{EXTENSION_ID}/options.html")
}

/// The browser setup of a configuration: `Some` when incoming traffic is stolen with a
/// `header_filter`.
pub fn setup(config: &MirrordConfig) -> Option<BrowserSetup> {
    let incoming = &config.feature.network.incoming;
    if incoming.mode != IncomingMode::Steal {
        return None;
    }
    let filter = incoming.http_filter.header_filter.as_ref()?.0.clone();
    let concrete = concrete_header(&filter);
    let mut fragment = form_urlencoded::Serializer::new(String::new());
    if let Some((name, value)) = &concrete {
        fragment.append_pair("header", name);
        fragment.append_pair("value", value);
    }
    fragment.append_pair("filter", &filter);
    let (header, value) = concrete.unzip();
    Some(BrowserSetup {
        link: format!("{}#{}", options_url(), fragment.finish()),
        filter,
        header,
        value,
    })
}

/// The one line `mirrord exec` prints for a setup.
pub fn offer_line(setup: &BrowserSetup) -> String {
    match (&setup.header, &setup.value) {
        (Some(name), Some(value)) => format!(
            "mirrord: to debug from the browser, open {} in Chromium with the mirrord extension: it adds \"{name}: {value}\" to the URLs you choose",
            setup.link
        ),
        _ => format!(
            "mirrord: to debug from the browser, open {} in Chromium with the mirrord extension and enter a header that matches the filter {:?} (it names no single value)",
            setup.link, setup.filter
        ),
    }
}

/// `(name, value)` when the filter matches exactly one header line the browser can send: a
/// plain `name: value`, optionally anchored (`^...$`). The agent matches the filter against
/// `name: value` with the name lowercased, so a name with capitals, or anything that is a
/// pattern (classes, repetition, alternation, `(?i)`), has no concrete header.
pub fn concrete_header(filter: &str) -> Option<(String, String)> {
    let hir = regex_syntax::Parser::new().parse(filter).ok()?;
    let literal = literal_between_anchors(&hir)?;
    let (name, value) = literal.split_once(": ")?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let name_ok = !name.is_empty()
        && name.chars().all(token)
        && !name.chars().any(|c| c.is_ascii_uppercase());
    // HTTP trims a value's surrounding whitespace, and control characters cannot be sent.
    let value_ok = !value.is_empty()
        && value.trim() == value
        && !value.chars().any(|c| c.is_control() && c != '\t');
    (name_ok && value_ok).then(|| (name.to_owned(), value.to_owned()))
}

/// The literal text of `hir`, allowing only start/end anchors around it.
fn literal_between_anchors(hir: &Hir) -> Option<String> {
    let anchor = |h: &Hir| {
        matches!(
            h.kind(),
            HirKind::Look(Look::Start | Look::End | Look::StartLF | Look::EndLF)
        )
    };
    let parts: Vec<&Hir> = match hir.kind() {
        HirKind::Concat(v) => v.iter().collect(),
        _ => vec![hir],
    };
    let mut rest = parts.as_slice();
    if let [first, tail @ ..] = rest {
        if anchor(first) {
            rest = tail;
        }
    }
    if let [head @ .., last] = rest {
        if anchor(last) {
            rest = head;
        }
    }
    match rest {
        [one] => match one.kind() {
            HirKind::Literal(l) => String::from_utf8(l.0.to_vec()).ok(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> MirrordConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn plain_filters_give_a_concrete_header() {
        let c = |f: &str| concrete_header(f);
        let pair = |n: &str, v: &str| Some((n.to_owned(), v.to_owned()));
        assert_eq!(c("x-user: alice"), pair("x-user", "alice"));
        assert_eq!(c("^x-user: alice$"), pair("x-user", "alice"));
        assert_eq!(c("^x-user: alice"), pair("x-user", "alice"));
        assert_eq!(c(r"x-user: alice\.smith"), pair("x-user", "alice.smith"));
        assert_eq!(c("x-user: two words"), pair("x-user", "two words"));
    }

    #[test]
    fn patterns_have_no_concrete_header() {
        for f in [
            "^x-debug: .*",
            "x-user: (alice|bob)",
            "x-user: alice+",
            "(?i)x-user: alice",
            "X-User: alice",
            "x-user:alice",
            "x-user: ",
            "x-user:  alice",
            "x user: alice",
            "[xy]-user: alice",
            "",
        ] {
            assert_eq!(concrete_header(f), None, "{f}");
        }
    }

    #[test]
    fn a_steal_with_a_header_filter_gets_a_link() {
        let s = setup(&config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
        ))
        .unwrap();
        assert_eq!(
            s.link,
            format!("chrome-extension://{EXTENSION_ID}/options.html#header=x-user&value=alice&filter=x-user%3A+alice")
        );
        assert_eq!(
            (s.header.as_deref(), s.value.as_deref()),
            (Some("x-user"), Some("alice"))
        );
        assert!(offer_line(&s).contains(&s.link));
        assert!(offer_line(&s).contains("\"x-user: alice\""));
    }

    #[test]
    fn a_pattern_filter_gets_a_link_without_a_value() {
        let s = setup(&config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"^x-debug: .*"}}}}}"#,
        ))
        .unwrap();
        assert_eq!(s.header, None);
        assert_eq!(s.value, None);
        assert!(s.link.ends_with("#filter=%5Ex-debug%3A+.*"), "{}", s.link);
        assert!(offer_line(&s).contains("names no single value"));
    }

    #[test]
    fn no_link_without_a_filtered_steal() {
        for json in [
            r#"{}"#,
            r#"{"feature":{"network":{"incoming":"steal"}}}"#,
            r#"{"feature":{"network":{"incoming":{"mode":"mirror","http_filter":{"header_filter":"x-user: alice"}}}}}"#,
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"path_filter":"^/api"}}}}}"#,
        ] {
            assert_eq!(setup(&config(json)), None, "{json}");
        }
    }
}
