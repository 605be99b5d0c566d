//! Kubernetes-style quantities and durations: the text forms operators write in policies
//! (`100m`, `"2"`, `64Mi`, `30s`, `1m30s`) turned into the integers the agent works in
//! (millicores, bytes, `Duration`). Pure parsing, no I/O.

use std::time::Duration;

/// Why a quantity or a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a number with an optional unit")]
    Malformed(String),
    #[error("`{value}` has an unknown unit `{unit}` (expected {expected})")]
    UnknownUnit {
        value: String,
        unit: String,
        expected: &'static str,
    },
    #[error("`{0}` must be greater than zero")]
    NotPositive(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is finer than one millicore")]
    TooFine(String),
}

/// Splits `"1.5Gi"` into its number (`"1.5"`) and its unit (`"Gi"`).
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Parses a decimal number without exponent into (integer part, fraction digits).
fn parse_decimal(number: &str, whole: &str) -> Result<f64, QuantityError> {
    let malformed = || QuantityError::Malformed(whole.to_string());
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(malformed());
    }
    let value: f64 = number.parse().map_err(|_| malformed())?;
    if !value.is_finite() {
        return Err(malformed());
    }
    Ok(value)
}

/// Parses a CPU quantity (`"250m"`, `"2"`, `"0.5"`, `"1.25"`) into millicores.
/// Zero and negative values are rejected: a CPU bound of nothing is never meant.
pub fn parse_cpu_millis(text: &str) -> Result<u64, QuantityError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (number, unit) = split_number(text);
    if number.is_empty() {
        return Err(QuantityError::Malformed(text.to_string()));
    }
    let scale = match unit {
        "m" => 0,
        "" => 3,
        other => {
            return Err(QuantityError::UnknownUnit {
                value: text.to_string(),
                unit: other.to_string(),
                expected: "`m` or none",
            });
        }
    };
    let millis = decimal_scaled(number, text, scale)?;
    if millis == 0 {
        return Err(QuantityError::NotPositive(text.to_string()));
    }
    if millis > 1_000_000_000 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    Ok(millis)
}

/// A decimal `int[.frac]` times 10^`scale`, exactly (no binary floating point: `1.005` is
/// 1005 thousandths, not 1004.999...). More significant fraction digits than `scale` are
/// finer than the unit; a negative number is not positive.
fn decimal_scaled(number: &str, whole: &str, scale: u32) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(whole.to_string());
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(malformed());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err(QuantityError::TooFine(whole.to_string()));
    }
    let too_large = || QuantityError::TooLarge(whole.to_string());
    let int_value = int
        .trim_start_matches('0')
        .parse::<u64>()
        .or_else(|e| {
            if int.trim_start_matches('0').is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| too_large())?;
    let frac_value = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().map_err(|_| malformed())? * 10u64.pow(scale - frac.len() as u32)
    };
    let value = int_value
        .checked_mul(10u64.pow(scale))
        .and_then(|v| v.checked_add(frac_value))
        .ok_or_else(too_large)?;
    if negative && value > 0 {
        return Err(QuantityError::NotPositive(whole.to_string()));
    }
    Ok(value)
}

/// Parses a memory quantity (`"64Mi"`, `"1G"`, `"1048576"`, `"1.5Gi"`) into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (number, unit) = split_number(text);
    let value = parse_decimal(number, text)?;
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(QuantityError::UnknownUnit {
                value: text.to_string(),
                unit: other.to_string(),
                expected: "one of k M G T Ki Mi Gi Ti or none",
            });
        }
    };
    let bytes = (value * factor).round();
    if bytes <= 0.0 {
        return Err(QuantityError::NotPositive(text.to_string()));
    }
    if bytes > 9.0e18 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    Ok(bytes as u64)
}

/// Parses a Go/Kubernetes-style duration (`"500ms"`, `"1s"`, `"5m"`, `"1m30s"`, `"1h"`).
/// A bare number is refused: the unit is what makes a duration readable.
pub fn parse_duration(text: &str) -> Result<Duration, QuantityError> {
    let whole = text.trim();
    if whole.is_empty() {
        return Err(QuantityError::Empty);
    }
    if whole.starts_with('-') {
        return Err(QuantityError::NotPositive(whole.to_string()));
    }
    let mut rest = whole;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let (number, tail) = split_number(rest);
        let value = parse_decimal(number, whole)?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let seconds = match unit {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(QuantityError::UnknownUnit {
                    value: whole.to_string(),
                    unit: String::new(),
                    expected: "a unit: ms, s, m or h",
                });
            }
            other => {
                return Err(QuantityError::UnknownUnit {
                    value: whole.to_string(),
                    unit: other.to_string(),
                    expected: "ms, s, m or h",
                });
            }
        };
        total += value * seconds;
        rest = next;
    }
    if total <= 0.0 {
        return Err(QuantityError::NotPositive(whole.to_string()));
    }
    if total > 1.0e9 {
        return Err(QuantityError::TooLarge(whole.to_string()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats millicores the way Kubernetes prints them: `"2"` for whole cores, `"250m"` otherwise.
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest binary unit that divides them (`"64Mi"`), else plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Formats a duration compactly (`"1s"`, `"500ms"`, `"2m"`).
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu_millis("100m"), Ok(100));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis(" 1.25 "), Ok(1250));
        assert_eq!(parse_cpu_millis("1000m"), Ok(1000));
        // Exact decimals: binary floating point would make 1.005 cores 1004.999...m.
        assert_eq!(parse_cpu_millis("1.005"), Ok(1005));
        assert_eq!(parse_cpu_millis("0.1"), Ok(100));
        assert_eq!(parse_cpu_millis("2.5000"), Ok(2500));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        assert_eq!(parse_cpu_millis("+250m"), Ok(250));
    }

    #[test]
    fn cpu_rejects() {
        assert_eq!(parse_cpu_millis(""), Err(QuantityError::Empty));
        assert!(matches!(
            parse_cpu_millis("0"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_cpu_millis("-1"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_cpu_millis("2 cores"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_cpu_millis("1Mi"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_cpu_millis("0.0001"),
            Err(QuantityError::TooFine(_))
        ));
        assert!(matches!(
            parse_cpu_millis("abc"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_cpu_millis("1.2.3"),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_cpu_millis("1.5m"),
            Err(QuantityError::TooFine(_))
        ));
        assert!(matches!(
            parse_cpu_millis("99999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_cpu_millis("."),
            Err(QuantityError::Malformed(_))
        ));
        assert!(matches!(
            parse_cpu_millis("-"),
            Err(QuantityError::Malformed(_))
        ));
    }

    #[test]
    fn bytes_forms() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Ok(1536));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(matches!(
            parse_bytes("10MB"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_bytes("0Mi"),
            Err(QuantityError::NotPositive(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(matches!(
            parse_duration("0s"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            parse_duration("10"),
            Err(QuantityError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("3 days"),
            Err(QuantityError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn formatting_round_trips() {
        for millis in [1, 100, 999, 1000, 1500, 2000] {
            assert_eq!(parse_cpu_millis(&format_cpu_millis(millis)), Ok(millis));
        }
        for bytes in [1, 1024, 64 << 20, 3 << 30, 12345] {
            assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
        }
        for ms in [500, 1000, 30_000, 120_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
