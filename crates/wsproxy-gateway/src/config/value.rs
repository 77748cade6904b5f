//! Values of flags and config keys: durations, sizes, rates, and the
//! rest, each parsed by one function for both, so that a flag and a key
//! accept the same text and fail with the same message.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration in humantime's syntax (`500ms`, `5s`, `10m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration '{s}' ({e}); use e.g. 500ms, 5s, 10m"))
}

/// A size in bytes: a number with an optional `KiB`, `MiB`, `GiB` (or `K`,
/// `M`, `G`) suffix, all powers of 1024.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &s[digits.len()..] {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        unit => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{unit}'; use e.g. 65536, 64KiB, 1MiB"
            ));
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size '{s}'; use e.g. 65536, 64KiB, 1MiB"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// A rate, `N/s` or `N/m`.
pub(crate) fn parse_rate(s: &str) -> Result<wsproxy::admit::Rate, String> {
    let invalid = || format!("invalid rate '{s}'; use e.g. 10/s or 600/m");
    let (n, per) = s.split_once('/').ok_or_else(invalid)?;
    let n: u32 = n.trim().parse().map_err(|_| invalid())?;
    if n == 0 {
        return Err(invalid());
    }
    match per.trim() {
        "s" => Ok(wsproxy::admit::Rate::per_second(n)),
        "m" => Ok(wsproxy::admit::Rate::per_minute(n)),
        _ => Err(invalid()),
    }
}

/// A load bound: a finite number of at least 1.
pub(crate) fn parse_factor(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 1.0)
        .ok_or_else(|| format!("invalid factor '{s}': a number of at least 1, e.g. 1.25"))
}

/// A try count of at least 1.
pub(crate) fn parse_tries(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("invalid tries '{s}': a whole number from 1"))
}

/// A cookie name: an HTTP token (RFC 6265).
pub(crate) fn parse_cookie_name(s: &str) -> Result<String, String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(token) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid cookie name '{s}': use letters, digits and !#$%&'*+-.^_`|~"
        ))
    }
}

/// A config value written as text and read by `parse`, the flag's parser.
fn text<'de, D, T>(deserializer: D, parse: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(de::Error::custom)
}

/// A duration key (`"500ms"`, `"5s"`, `"10m"`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    text(deserializer, parse_duration)
}

/// An optional duration key: absent is `None` (with `#[serde(default)]`).
pub(crate) fn some_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// A timeout that may be off: `"off"`, `"0"` or a duration.
pub(crate) fn timeout_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    text(deserializer, parse_timeout_or_off)
}

/// `off`, `0` (none) or a duration.
pub(crate) fn parse_timeout_or_off(s: &str) -> Result<Option<Duration>, String> {
    if s == "off" || s == "0" {
        return Ok(None);
    }
    let duration = parse_duration(s)?;
    Ok((!duration.is_zero()).then_some(duration))
}

/// A rate key (`"10/s"`, `"600/m"`).
pub(crate) fn rate<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<wsproxy::admit::Rate, D::Error> {
    text(deserializer, parse_rate)
}

/// An optional rate key.
pub(crate) fn some_rate<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<wsproxy::admit::Rate>, D::Error> {
    rate(deserializer).map(Some)
}

/// A load bound key (a number of at least 1).
pub(crate) fn some_factor<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let factor = f64::deserialize(deserializer)?;
    parse_factor(&factor.to_string())
        .map(Some)
        .map_err(de::Error::custom)
}

/// A count of at least 1.
pub(crate) fn some_count<'de, D: Deserializer<'de>, T>(
    deserializer: D,
) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de> + PartialOrd + From<u8> + fmt::Display,
{
    let count = T::deserialize(deserializer)?;
    if count < T::from(1) {
        return Err(de::Error::custom(format!(
            "invalid value {count}: a whole number from 1"
        )));
    }
    Ok(Some(count))
}

/// A cookie name key.
pub(crate) fn cookie_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    text(deserializer, parse_cookie_name)
}

/// A key read by the type's `FromStr` (URLs, CIDRs, health checks,
/// strategies).
pub(crate) fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

/// An optional key read by the type's `FromStr`.
pub(crate) fn some_parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    parsed(deserializer).map(Some)
}

/// A list of keys read by the type's `FromStr`.
pub(crate) fn parsed_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: fmt::Display>,
{
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| text.parse().map_err(de::Error::custom))
        .collect()
}

/// An optional size key: a number of bytes, or text such as `"64KiB"`.
pub(crate) fn some_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    struct Size;
    impl Visitor<'_> for Size {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: a number of bytes, or text such as \"64KiB\" or \"1MiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: negative")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Size).map(Some)
}

/// A table or an array of tables (`[listen]` or `[[listen]]`), as a list.
pub(crate) fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    struct OneOrMany<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table, or an array of tables")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(|one| vec![one])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(OneOrMany(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        use wsproxy::admit::Rate;
        assert_eq!(parse_rate("10/s"), Ok(Rate::per_second(10)));
        assert_eq!(parse_rate("600/m"), Ok(Rate::per_minute(600)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("10/h").is_err());
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("10").is_err());
    }

    #[test]
    fn numbers_and_names_parse() {
        assert_eq!(parse_factor("1.25"), Ok(1.25));
        assert_eq!(parse_factor("1"), Ok(1.0));
        for bad in ["0.5", "NaN", "inf", "lots"] {
            assert!(parse_factor(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tries("2"), Ok(2));
        assert!(parse_tries("0").is_err());
        assert_eq!(
            parse_cookie_name("wsgate_backend"),
            Ok("wsgate_backend".into())
        );
        assert!(parse_cookie_name("a b").is_err());
        assert!(parse_cookie_name("a=b").is_err());
        assert!(parse_cookie_name("").is_err());
    }

    #[test]
    fn timeouts_may_be_off() {
        assert_eq!(parse_timeout_or_off("off"), Ok(None));
        assert_eq!(parse_timeout_or_off("0s"), Ok(None));
        assert_eq!(parse_timeout_or_off("0"), Ok(None));
        assert_eq!(
            parse_timeout_or_off("10m"),
            Ok(Some(Duration::from_secs(600)))
        );
        assert!(parse_timeout_or_off("ten").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("1MB").unwrap_err().contains("unknown unit 'MB'"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
