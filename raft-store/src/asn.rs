//! Agent Serial Numbers: `ASN-YYYY-DDDD-DDDD-L`.
//!
//! `YYYY` is the UTC year in which the agent was registered. `DDDDDDDD` is the agent's number
//! `n` (1, 2, … across the whole cluster) scrambled by `n × 48271 mod 10^8`, a bijection on
//! 8-digit numbers (48271 is coprime with 10^8), so ASNs are unique and do not reveal the
//! registration order at a glance. `L` is a check letter: `A + (Σ (i+1)·dᵢ mod 26)` over the 12
//! digits `YYYYDDDDDDDD`, i from 0. Assigned when the `CreateAgent` command is applied, so every
//! node derives the same ASN.

/// How many agents a cluster can register: the 8-digit number space.
pub const AGENTS_MAX: u64 = 100_000_000;
const SCRAMBLE: u64 = 48_271;

/// The UTC calendar year of a Unix time in milliseconds (proleptic Gregorian).
pub fn utc_year(unix_ms: i64) -> i64 {
    // Howard Hinnant's civil_from_days.
    let days = unix_ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

fn check_letter(digits: &[u8]) -> char {
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u32 + 1) * u32::from(d - b'0'))
        .sum();
    char::from(b'A' + (sum % 26) as u8)
}

/// The ASN of the `n`-th agent (from 1), registered at `unix_ms`.
pub fn format(n: u64, unix_ms: i64) -> String {
    assert!(
        (1..AGENTS_MAX).contains(&n),
        "agent number {n} out of range"
    );
    let year = utc_year(unix_ms).clamp(0, 9999);
    let number = (n * SCRAMBLE) % AGENTS_MAX;
    let digits = format!("{year:04}{number:08}");
    let letter = check_letter(digits.as_bytes());
    format!(
        "ASN-{}-{}-{}-{letter}",
        &digits[..4],
        &digits[4..8],
        &digits[8..]
    )
}

/// Whether `text` is a well-formed ASN with a correct check letter.
pub fn is_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 20
        || !text.starts_with("ASN-")
        || bytes[8] != b'-'
        || bytes[13] != b'-'
        || bytes[18] != b'-'
    {
        return false;
    }
    let digits: Vec<u8> = [&bytes[4..8], &bytes[9..13], &bytes[14..18]].concat();
    digits.iter().all(u8::is_ascii_digit) && char::from(bytes[19]) == check_letter(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years() {
        assert_eq!(utc_year(0), 1970);
        assert_eq!(utc_year(1_773_844_200_000), 2026); // 2026-03-18T14:30:00Z
        assert_eq!(utc_year(1_767_225_599_999), 2025); // 2025-12-31T23:59:59.999Z
        assert_eq!(utc_year(1_767_225_600_000), 2026); // 2026-01-01T00:00:00Z
        assert_eq!(utc_year(951_782_400_000), 2000); // 2000-02-29
    }

    #[test]
    fn asns_are_unique_well_formed_and_checked() {
        let at = 1_773_844_200_000;
        let mut seen = std::collections::HashSet::new();
        for n in 1..5_000 {
            let asn = format(n, at);
            assert!(is_valid(&asn), "{asn}");
            assert!(asn.starts_with("ASN-2026-"), "{asn}");
            assert!(seen.insert(asn));
        }
        let asn = format(1, at);
        // One changed digit breaks the check letter.
        let mut broken = asn.clone().into_bytes();
        broken[9] = if broken[9] == b'9' {
            b'0'
        } else {
            broken[9] + 1
        };
        assert!(!is_valid(&String::from_utf8(broken).expect("ascii")));
        assert!(!is_valid("ASN-2026-0384-7721"));
        assert!(!is_valid("asn-2026-0384-7721-A"));
        assert!(!is_valid("ASN-2026-0384-772a-A"));
    }
}
