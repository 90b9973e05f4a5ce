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
    /// than silently ignored. For a config with fields that must be given, use
    /// [`Config::parse_required`].
    pub fn parse<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        if self.is_null() {
            return Ok(T::default());
        }
        self.deserialize(&self.json)
    }

    /// Deserialises a configuration that has required fields: `T` needs no `Default`, a
    /// missing configuration is read as `{}`, and a field that is missing (at any depth)
    /// is reported by its path.
    ///
    /// ```
    /// use meshfilter_guest_sdk::Config;
    /// use serde::Deserialize;
    ///
    /// #[derive(Debug, Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Settings {
    ///     region: String,
    ///     #[serde(default)]
    ///     ttl_ms: u32,
    /// }
    ///
    /// let settings: Settings = Config::new(r#"{"region": "eu-west-1"}"#).parse_required()?;
    /// assert_eq!(settings.region, "eu-west-1");
    /// assert_eq!(
    ///     Config::new("null").parse_required::<Settings>().unwrap_err(),
    ///     "invalid config: missing required field `region`"
    /// );
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse_required<T: DeserializeOwned>(&self) -> Result<T, String> {
        if self.is_null() {
            return self.deserialize("{}");
        }
        self.deserialize(&self.json)
    }

    /// Deserialises `json` as `T`, naming the offending field in the error.
    fn deserialize<T: DeserializeOwned>(&self, json: &str) -> Result<T, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            // serde reports a missing field at its parent; name the field itself.
            if let Some(field) = missing_field(&inner) {
                let full = if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                };
                return format!("invalid config: missing required field `{full}`");
            }
            if path == "." {
                format!("invalid config: {inner}")
            } else {
                format!("invalid config at {path}: {inner}")
            }
        })?;
        de.end().map_err(|err| format!("invalid config: {err}"))?;
        Ok(value)
    }
}

/// The field of serde's `missing field `x`` message (followed by a position in
/// serde_json's errors).
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    Some(&rest[..rest.find('`')?])
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

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Required {
        region: String,
        #[serde(default)]
        teams: Vec<Team>,
    }

    #[test]
    fn required_fields_are_named_when_missing() {
        let cases = [
            ("null", "invalid config: missing required field `region`"),
            ("{}", "invalid config: missing required field `region`"),
            (
                r#"{"region": "r", "teams": [{"name": "a"}, {}]}"#,
                "invalid config: missing required field `teams[1].name`",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                Config::new(text).parse_required::<Required>().unwrap_err(),
                want,
                "{text}"
            );
        }
        assert_eq!(
            Config::new(r#"{"region": "r"}"#).parse_required::<Required>(),
            Ok(Required {
                region: "r".into(),
                teams: vec![]
            })
        );
        assert!(
            Config::new(r#"{"region": "r", "zone": "z"}"#)
                .parse_required::<Required>()
                .unwrap_err()
                .starts_with("invalid config at zone: unknown field `zone`")
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
