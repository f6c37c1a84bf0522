//! How the text of a flag or a `CORECAST_*` variable becomes a configuration value: the clap
//! value parsers that every section of the configuration names in its `#[arg]` attributes.
//! A crate of its own because storage's `[store]` section uses them too, and the
//! `corecast-config` crate, which composes the sections, depends on storage.
//!
//! A bad value fails with a message that names the key's variable (`invalid value "two" for
//! CORECAST_SHARDS: ...`), whether it came from the variable or from the flag.
//!
//! Fields typed `std::option::Option<_>` or `std::vec::Vec<_>` in full, in the sections, keep
//! clap's derive from treating them as optional or repeated arguments: each key is one value,
//! which [`optional`] or [`list`] parse.

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use serde::de::value::{Error as DeError, StrDeserializer};
use serde::de::DeserializeOwned;
use std::ffi::OsStr;
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

/// Parses one key's text into its value; [`parse`], [`list`] and the others make one.
#[derive(Clone)]
pub struct Value<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Value<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let key = arg
            .and_then(|a| a.get_env().and_then(OsStr::to_str).map(String::from))
            .or_else(|| arg.map(|a| a.get_id().to_string()))
            .unwrap_or_default();
        let fail = |why: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value {value:?} for {key}: {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| fail("not UTF-8".into()))?;
        (self.0)(text).map_err(fail)
    }
}

/// A number, an address or a `true`/`false`, as its `FromStr` reads it, around blanks.
pub fn parse<T>() -> Value<T>
where
    T: FromStr,
    T::Err: Display,
{
    Value(|v| v.trim().parse::<T>().map_err(|e| e.to_string()))
}

/// A path, exactly as given.
pub fn path() -> Value<PathBuf> {
    Value(|v| Ok(PathBuf::from(v)))
}

/// A comma-separated list; blanks around items and empty items are dropped.
pub fn list() -> Value<Vec<String>> {
    Value(|v| {
        Ok(v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    })
}

/// A value that may be unset: the empty text unsets it.
pub fn optional<T: From<String>>() -> Value<Option<T>> {
    Value(|v| Ok((!v.is_empty()).then(|| T::from(v.to_string()))))
}

/// A value that may be unset, as [`parse`] reads it: the empty text unsets it.
pub fn optional_parse<T>() -> Value<Option<T>>
where
    T: FromStr,
    T::Err: Display,
{
    Value(|v| match v.trim() {
        "" => Ok(None),
        v => v.parse::<T>().map(Some).map_err(|e| e.to_string()),
    })
}

/// One of an enum's variants, by the name the config file uses for it (serde's).
pub fn choice<T: DeserializeOwned>() -> Value<T> {
    Value(|v| T::deserialize(StrDeserializer::<DeError>::new(v.trim())).map_err(|e| e.to_string()))
}
