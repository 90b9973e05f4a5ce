//! A filter's configuration, as the host hands it over.

use serde::de::DeserializeOwned;

/// The `config` of a filter's entry in the host's filter manifest, as JSON text (`null`
/// when the manifest gives none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    json: String,
}

impl Config {
    /// Wraps JSON text. Nothing is checked until [`Config::parse`].
    pub fn new(json: impl Into<String>) -> Config {
        Config { json: json.into() }
    }

    /// The JSON text exactly as the host passed it.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// Whether no configuration was given (`null`, or blank text).
    pub fn is_null(&self) -> bool {
        matches!(self.json.trim(), "" | "null")
    }

    /// Deserialises the configuration; no configuration gives `T::default()`.
    ///
    /// The error names the path of the offending field and what is wrong with it, e.g.
    /// `invalid config at teams[0].scope: ...`, ready to return from
    /// [`Filter::configure`](crate::Filter::configure). Add
    /// `#[serde(deny_unknown_fields)]` to `T` so that a misspelt field is an error rather
    /// than silently ignored.
    pub fn parse<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        if self.is_null() {
            return Ok(T::default());
        }
        let mut json = serde_json::Deserializer::from_str(&self.json);
        let value = serde_path_to_error::deserialize(&mut json).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                format!("invalid config: {inner}")
            } else {
                format!("invalid config at {path}: {inner}")
            }
        })?;
        json.end().map_err(|err| format!("invalid config: {err}"))?;
        Ok(value)
    }
}

impl Default for Config {
    /// No configuration: `null`.
    fn default() -> Config {
        Config::new("null")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        ttl_ms: u32,
        #[serde(default)]
        teams: Vec<Team>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Team {
        name: String,
    }

    #[test]
    fn null_and_blank_give_the_default() {
        for text in ["null", " null\n", "", "  "] {
            assert_eq!(
                Config::new(text).parse::<Settings>(),
                Ok(Settings::default()),
                "{text:?}"
            );
        }
        assert!(Config::default().is_null());
    }

    #[test]
    fn parses_fields() {
        let parsed: Settings = Config::new(r#"{"ttlMs": 5, "teams": [{"name": "a"}]}"#)
            .parse()
            .unwrap();
        assert_eq!(
            parsed,
            Settings {
                ttl_ms: 5,
                teams: vec![Team { name: "a".into() }]
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"ttlMs": "x"}"#,
                "invalid config at ttlMs: invalid type: string \"x\"",
            ),
            (
                r#"{"teams": [{"name": "a"}, {"nam": "b"}]}"#,
                "invalid config at teams[1].nam: unknown field `nam`",
            ),
            (
                r#"{"ttlMs": 1} trailing"#,
                "invalid config: trailing characters",
            ),
            (
                "42",
                "invalid config: invalid type: integer `42`, expected struct Settings",
            ),
        ];
        for (text, want) in cases {
            let err = Config::new(text).parse::<Settings>().unwrap_err();
            assert!(
                err.starts_with(want),
                "{text}: got {err:?}, want it to start with {want:?}"
            );
        }
    }
}
