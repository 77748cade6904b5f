//! Values of flags: durations, sizes, rates.

use std::time::Duration;

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
