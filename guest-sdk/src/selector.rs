//! Kubernetes label selectors: the one matcher every filter uses.
//!
//! Two spellings, one meaning (k8s.io/apimachinery `metav1.LabelSelector` and the
//! `labels.Parse` string grammar that `kubectl -l` accepts):
//!
//! - the API object, `{"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier",
//!   "operator": "In", "values": ["api", "edge"]}]}`, with operators `In`, `NotIn`,
//!   `Exists` and `DoesNotExist`;
//! - the string, `app=web,tier in (api,edge),!legacy,env!=prod,team`, with `=` (or `==`),
//!   `!=`, `in (...)`, `notin (...)`, `key` (exists) and `!key` (does not exist).
//!
//! As in Kubernetes, `!=` and `notin` also match pods that lack the label, and the empty
//! selector matches everything.

use crate::Endpoint;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A Kubernetes label selector.
///
/// ```
/// use meshfilter_guest_sdk::{Endpoint, LabelSelector};
/// let selector: LabelSelector = "app=web,tier in (api,edge),!legacy".parse()?;
/// let pod = Endpoint::builder().label("app", "web").label("tier", "api").build();
/// assert!(selector.matches(&pod));
/// assert_eq!(pod.reads(), ["label(app)", "label(tier)", "label(legacy)"]);
///
/// let err = "app in (web".parse::<LabelSelector>().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid label selector "app in (web": expected "," or ")" after "web", found end of input"#);
/// # Ok::<(), meshfilter_guest_sdk::SelectorError>(())
/// ```
///
/// It deserialises from either spelling: a JSON string is parsed as the string form, an
/// object as the API form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

/// The `operator` of a `matchExpressions` entry, spelt as in the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a label selector was rejected: the offending token and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// Which selector: the quoted text, or where in the API object.
    location: String,
    token: String,
    problem: String,
}

impl SelectorError {
    fn new(location: &str, token: &str, problem: impl Into<String>) -> SelectorError {
        SelectorError {
            location: location.to_string(),
            token: token.to_string(),
            problem: problem.into(),
        }
    }

    /// The token (key, value, operator or punctuation) the problem was found at; empty at
    /// the end of the input.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid label selector {}: {}",
            self.location, self.problem
        )
    }
}

impl std::error::Error for SelectorError {}

impl LabelSelector {
    /// Parses the string form (`kubectl -l` syntax). Blank text is the empty selector.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let location = format!("{text:?}");
        Parser {
            tokens: lex(text, &location)?,
            location,
            at: 0,
        }
        .selector()
    }

    /// Whether the selector has no requirements (and so matches every endpoint).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `endpoint`'s labels satisfy every requirement.
    ///
    /// Labels are read one key at a time with [`Endpoint::label`], in the order the
    /// requirements were written, stopping at the first that fails: the memo key holds
    /// only the labels the selector looked at.
    pub fn matches(&self, endpoint: &Endpoint) -> bool {
        self.matches_with(|key| endpoint.label(key))
    }

    /// [`LabelSelector::matches`] over any label lookup.
    pub fn matches_with(&self, mut label: impl FnMut(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = label(&r.key);
            let listed = || value.as_ref().is_some_and(|v| r.values.contains(v));
            match r.operator {
                Operator::In => listed(),
                Operator::NotIn => !listed(),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<LabelSelector, SelectorError> {
        LabelSelector::parse(text)
    }
}

impl fmt::Display for LabelSelector {
    /// The string form, which [`LabelSelector::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = &r.key;
            match (r.operator, r.values.as_slice()) {
                (Operator::Exists, _) => write!(f, "{key}")?,
                (Operator::DoesNotExist, _) => write!(f, "!{key}")?,
                (Operator::In, [value]) => write!(f, "{key}={value}")?,
                (Operator::NotIn, [value]) => write!(f, "{key}!={value}")?,
                (Operator::In, values) => write!(f, "{key} in ({})", values.join(","))?,
                (Operator::NotIn, values) => write!(f, "{key} notin ({})", values.join(","))?,
            }
        }
        Ok(())
    }
}

impl Requirement {
    /// Checks a requirement the way the Kubernetes API server does. `location` says which
    /// selector, for the error.
    fn new(
        location: &str,
        key: &str,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Requirement, SelectorError> {
        if !is_qualified_name(key) {
            return Err(SelectorError::new(
                location,
                key,
                format!(
                    "{key:?} is not a label key (an optional DNS prefix and '/', then at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
                ),
            ));
        }
        if let Some(bad) = values.iter().find(|v| !is_label_value(v)) {
            return Err(SelectorError::new(
                location,
                bad,
                format!(
                    "{bad:?} is not a label value (at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
                ),
            ));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(SelectorError::new(
                    location,
                    key,
                    format!("{operator:?} on {key:?} needs at least one value"),
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(SelectorError::new(
                    location,
                    key,
                    format!("{operator:?} on {key:?} takes no values"),
                ));
            }
            _ => {}
        }
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }
}

// ---- The string form ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A key, a value, or the words `in` / `notin`.
    Word(&'a str),
    /// `!`
    Not,
    /// `=` or `==`
    Equals,
    /// `!=`
    NotEquals,
    Comma,
    Open,
    Close,
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ',' | '(' | ')' | '=' | '!' | '<' | '>')
}

/// Splits `text` into tokens, each with the text it came from.
fn lex<'a>(text: &'a str, location: &str) -> Result<Vec<(Token<'a>, &'a str)>, SelectorError> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = match c {
            '!' | '=' if rest[1..].starts_with('=') => 2,
            ',' | '(' | ')' | '!' | '=' => 1,
            '<' | '>' => {
                return Err(SelectorError::new(
                    location,
                    &rest[..1],
                    format!("operator {c:?} is not supported (use =, !=, in, notin, exists or !)"),
                ));
            }
            _ => rest.find(|c| !is_word_char(c)).unwrap_or(rest.len()),
        };
        let (raw, tail) = rest.split_at(len);
        let token = match raw {
            "!" => Token::Not,
            "=" | "==" => Token::Equals,
            "!=" => Token::NotEquals,
            "," => Token::Comma,
            "(" => Token::Open,
            ")" => Token::Close,
            word => Token::Word(word),
        };
        tokens.push((token, raw));
        rest = tail.trim_start();
    }
    Ok(tokens)
}

struct Parser<'a> {
    location: String,
    tokens: Vec<(Token<'a>, &'a str)>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.at).map(|(t, _)| *t)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.peek();
        self.at += 1;
        token
    }

    /// An error at the token just taken, or at the end of the input.
    fn error(&self, expected: &str) -> SelectorError {
        let (found, token) = match self.tokens.get(self.at.saturating_sub(1)) {
            Some((_, raw)) if self.at <= self.tokens.len() => (format!("{raw:?}"), *raw),
            _ => ("end of input".to_string(), ""),
        };
        SelectorError::new(&self.location, token, format!("{expected}, found {found}"))
    }

    fn selector(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        if self.tokens.is_empty() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                None => return Ok(LabelSelector { requirements }),
                Some(Token::Comma) => {}
                Some(_) => return Err(self.error(r#"expected "," between requirements"#)),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, operator, values) = match self.next() {
            Some(Token::Not) => match self.next() {
                Some(Token::Word(key)) => (key, Operator::DoesNotExist, Vec::new()),
                _ => return Err(self.error(r#"expected a label key after "!""#)),
            },
            Some(Token::Word(key)) => match self.peek() {
                None | Some(Token::Comma) => (key, Operator::Exists, Vec::new()),
                Some(Token::Equals) => {
                    self.at += 1;
                    (key, Operator::In, vec![self.single_value(key)?])
                }
                Some(Token::NotEquals) => {
                    self.at += 1;
                    (key, Operator::NotIn, vec![self.single_value(key)?])
                }
                Some(Token::Word("in")) => {
                    self.at += 1;
                    (key, Operator::In, self.value_list()?)
                }
                Some(Token::Word("notin")) => {
                    self.at += 1;
                    (key, Operator::NotIn, self.value_list()?)
                }
                Some(_) => {
                    self.at += 1;
                    return Err(self.error(&format!(
                        r#"expected "=", "!=", "in", "notin", "," or the end after key {key:?}"#
                    )));
                }
            },
            _ => return Err(self.error("expected a label key or \"!\"")),
        };
        Requirement::new(&self.location, key, operator, values)
    }

    /// The value after `=` or `!=`; empty when nothing follows.
    fn single_value(&mut self, key: &str) -> Result<String, SelectorError> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Word(value)) => {
                self.at += 1;
                Ok(value.to_string())
            }
            Some(_) => {
                self.at += 1;
                Err(self.error(&format!("expected a value for {key:?}")))
            }
        }
    }

    /// `( value, ... )` after `in` or `notin`.
    fn value_list(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Token::Open) {
            return Err(self.error(r#"expected "(" after "in" or "notin""#));
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Word(value)) => values.push(value.to_string()),
                Some(Token::Close) if values.is_empty() => return Ok(values),
                _ => return Err(self.error("expected a value")),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                _ => {
                    let last = values.last().map(String::as_str).unwrap_or_default();
                    return Err(self.error(&format!(r#"expected "," or ")" after {last:?}"#)));
                }
            }
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name
/// (k8s.io/apimachinery `validation.IsQualifiedName`).
fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// At most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends, not empty.
fn is_label_name(name: &str) -> bool {
    is_bounded_word(name, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
    })
}

/// A label value: empty, or a label name.
fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// RFC 1123 subdomain: dot-separated lowercase labels, at most 253 bytes.
fn is_dns_subdomain(prefix: &str) -> bool {
    prefix.len() <= 253
        && prefix.split('.').all(|label| {
            is_bounded_word(label, |c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
            })
        })
}

/// 1 to 63 bytes, each allowed by `inner`, alphanumeric at both ends: the shape shared by
/// label names and DNS labels.
fn is_bounded_word(word: &str, inner: impl Fn(u8) -> bool) -> bool {
    let b = word.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| inner(c))
}

// ---- The API object form ----

/// `metav1.LabelSelector` as JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorObject {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<ExpressionObject>>,
}

/// `metav1.LabelSelectorRequirement` as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionObject {
    key: String,
    operator: Operator,
    values: Option<Vec<String>>,
}

impl SelectorObject {
    fn into_selector(self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in self.match_labels.unwrap_or_default() {
            requirements.push(Requirement::new(
                "at matchLabels",
                &key,
                Operator::In,
                vec![value],
            )?);
        }
        for (i, e) in self
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = format!("at matchExpressions[{i}]");
            requirements.push(Requirement::new(
                &at,
                &e.key,
                e.operator,
                e.values.unwrap_or_default(),
            )?);
        }
        Ok(LabelSelector { requirements })
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LabelSelector, D::Error> {
        struct SelectorVisitor;

        impl<'de> Visitor<'de> for SelectorVisitor {
            type Value = LabelSelector;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label selector: a string such as \"app=web,tier in (a,b)\" or an object with matchLabels / matchExpressions")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<LabelSelector, E> {
                LabelSelector::parse(text).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LabelSelector, A::Error> {
                SelectorObject::deserialize(de::value::MapAccessDeserializer::new(map))?
                    .into_selector()
                    .map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(SelectorVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn string_form_matches_like_kubernetes() {
        let web_api = [("app", "web"), ("tier", "api"), ("env", "dev")];
        let legacy = [("app", "web"), ("legacy", "yes")];
        let none: [(&str, &str); 0] = [];
        // (selector, matches web_api, matches legacy, matches none)
        let cases = [
            ("", true, true, true),
            ("app=web", true, true, false),
            ("app==web", true, true, false),
            ("app!=web", false, false, true),
            ("tier in (api, edge)", true, false, false),
            ("tier notin (api)", false, true, true),
            ("legacy", false, true, false),
            ("!legacy", true, false, true),
            ("env!=prod", true, true, true),
            (
                "app=web,tier in (a,b),!legacy,env!=prod,team",
                false,
                false,
                false,
            ),
            ("app=web,!legacy", true, false, false),
            ("team=", false, false, false),
            ("example.com/team", false, false, false),
        ];
        for (text, a, b, c) in cases {
            let selector = LabelSelector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                selector.matches_with(labels(&web_api)),
                a,
                "{text:?} on web_api"
            );
            assert_eq!(
                selector.matches_with(labels(&legacy)),
                b,
                "{text:?} on legacy"
            );
            assert_eq!(
                selector.matches_with(labels(&none)),
                c,
                "{text:?} on no labels"
            );
        }
    }

    #[test]
    fn errors_name_the_bad_token() {
        let cases = [
            (
                "app in (web",
                "",
                r#"expected "," or ")" after "web", found end of input"#,
            ),
            (
                "app in web",
                "web",
                r#"expected "(" after "in" or "notin", found "web""#,
            ),
            (
                "app in ()",
                "app",
                r#"In on "app" needs at least one value"#,
            ),
            (
                "app=web,",
                "",
                r#"expected a label key or "!", found end of input"#,
            ),
            (
                "app web",
                "web",
                r#"expected "=", "!=", "in", "notin", "," or the end after key "app", found "web""#,
            ),
            ("tier > 3", ">", r#"operator '>' is not supported"#),
            (
                "!",
                "",
                r#"expected a label key after "!", found end of input"#,
            ),
            ("bad key!x", "key", r#"expected "=", "!=""#),
            ("-app=web", "-app", r#""-app" is not a label key"#),
            ("app=we/b", "we/b", r#""we/b" is not a label value"#),
            ("Example.com/app", "Example.com/app", "is not a label key"),
            (
                "a=b c",
                "c",
                r#"expected "," between requirements, found "c""#,
            ),
            ("(", "(", r#"expected a label key or "!", found "(""#),
        ];
        for (text, token, problem) in cases {
            let err = LabelSelector::parse(text).expect_err(text);
            assert_eq!(err.token(), token, "{text:?}: {err}");
            assert!(
                err.to_string().contains(problem),
                "{text:?}: got {err}, want {problem:?}"
            );
            assert!(
                err.to_string().contains(&format!("{text:?}")),
                "{err} names the selector"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "app=web",
            "app!=web",
            "a in (x,y)",
            "a notin (x,y)",
            "a",
            "!a",
            "a=,b=c",
            "x.io/a=b",
        ] {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.to_string(), text);
            assert_eq!(
                LabelSelector::parse(&selector.to_string()).unwrap(),
                selector
            );
        }
    }

    #[test]
    fn deserialises_both_forms() {
        let object: LabelSelector = serde_json::from_str(
            r#"{"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "edge"]},
                                     {"key": "legacy", "operator": "DoesNotExist"}]}"#,
        )
        .unwrap();
        let text: LabelSelector =
            serde_json::from_str(r#""app=web,tier in (api,edge),!legacy""#).unwrap();
        assert_eq!(object, text);
        let empty: LabelSelector = serde_json::from_str(r#"{"matchLabels": null}"#).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn object_form_errors_name_the_entry() {
        let cases = [
            (
                r#"{"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}"#,
                "matchExpressions[0]",
            ),
            (
                r#"{"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}"#,
                "unknown variant `Gt`",
            ),
            (
                r#"{"matchLabels": {"a": "not ok"}}"#,
                r#""not ok" is not a label value"#,
            ),
            (r#"{"matchLabel": {}}"#, "unknown field `matchLabel`"),
            ("42", "a label selector"),
        ];
        for (json, want) in cases {
            let err = serde_json::from_str::<LabelSelector>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}: got {err}, want {want:?}");
        }
    }
}
