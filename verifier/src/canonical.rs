//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! * Objects: members sorted by their names compared as arrays of UTF-16
//!   code units; no whitespace anywhere.
//! * Strings: as ECMAScript's `JSON.stringify` writes them: `\"`, `\\`, `\b`,
//!   `\t`, `\n`, `\f`, `\r`, other characters below U+0020 as `\u00xx`
//!   (lowercase hex), every other character as itself (UTF-8).
//! * Numbers: IEEE 754 doubles, written as ECMAScript's `Number.prototype.toString`
//!   writes them (shortest round-trip digits; `1e+21`, `1e-7`, `0.000001`,
//!   `-0` as `0`). Integers beyond 2^53 are rounded to the nearest double,
//!   as every JCS implementation does.
//! * Literals: `null`, `true`, `false`.

use serde_json::Value;
use std::fmt::Write as _;

/// Nesting deeper than this is refused (a guard against stack exhaustion on
/// values built in code; the JSON parser already stops at 128).
pub const DEPTH_MAX: usize = 256;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("number {0} is not finite (NaN and infinities have no JSON form)")]
    NonFiniteNumber(String),
    #[error("number {0} cannot be represented as an IEEE 754 double")]
    UnrepresentableNumber(String),
    #[error("value nested deeper than {DEPTH_MAX} levels")]
    TooDeep,
    #[error("invalid JSON: {0}")]
    Parse(String),
}

/// The RFC 8785 canonical JSON text of a value.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_canonical(&mut out, value)?;
    Ok(out)
}

/// Appends the RFC 8785 canonical JSON text of `value` to `out`.
pub fn write_canonical(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    write_value(out, value, 0)
}

/// Parses JSON text (one value, nothing after it but whitespace) and returns
/// its canonical form. Numbers are parsed to the correctly rounded double.
pub fn canonicalize_str(text: &str) -> Result<String, CanonicalError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| CanonicalError::Parse(e.to_string()))?;
    canonical_json(&value)
}

/// Whether `text` is exactly the canonical JSON text of a JSON object (what
/// an event's `metadata_jcs` must be).
pub fn is_canonical_object(text: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => {
            matches!(canonical_json(&value), Ok(canonical) if canonical == text)
        }
        _ => false,
    }
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    if depth > DEPTH_MAX {
        return Err(CanonicalError::TooDeep);
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_json_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_value(out, item, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_json_number(out: &mut String, n: &serde_json::Number) -> Result<(), CanonicalError> {
    const EXACT: u64 = 1 << 53;
    if let Some(u) = n.as_u64().filter(|u| *u <= EXACT) {
        let _ = write!(out, "{u}");
        return Ok(());
    }
    if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= EXACT) {
        let _ = write!(out, "{i}");
        return Ok(());
    }
    // Every other number is the double nearest to it (`as` rounds to nearest,
    // ties to even, as ECMAScript's parser does).
    let f = n
        .as_f64()
        .ok_or_else(|| CanonicalError::UnrepresentableNumber(n.to_string()))?;
    write_number(out, f)
}

/// Appends ECMAScript's `Number.prototype.toString(x)` of a finite double
/// (ECMA-262 §6.1.6.1.20, as RFC 8785 §3.2.2.3 requires).
pub fn write_number(out: &mut String, x: f64) -> Result<(), CanonicalError> {
    if !x.is_finite() {
        return Err(CanonicalError::NonFiniteNumber(format!("{x}")));
    }
    if x == 0.0 {
        out.push('0'); // also -0
        return Ok(());
    }
    // ryu-js writes the shortest digit string that round-trips, the one
    // closest to x (ties to even), laid out as ECMA-262 §6.1.6.1.20 says.
    let mut buffer = ryu_js::Buffer::new();
    out.push_str(buffer.format_finite(x));
    Ok(())
}

/// ECMAScript `Number.prototype.toString` of a finite double, as a new string.
pub fn number_to_string(x: f64) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_number(&mut out, x)?;
    Ok(out)
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_basic() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1e-6, "0.000001"),
            (123456.789, "123456.789"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (x, want) in cases {
            assert_eq!(number_to_string(*x).as_deref(), Ok(*want), "{x:e}");
        }
        assert!(number_to_string(f64::NAN).is_err());
        assert!(number_to_string(f64::INFINITY).is_err());
    }
}
