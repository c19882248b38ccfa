//! RFC 3339 timestamps as milliseconds since the Unix epoch, without a date library: tests read
//! `created_at` values and build `from`/`to` bounds between them.

use anyhow::{Context, Result, bail, ensure};

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to milliseconds since the epoch (the
/// fraction is truncated to milliseconds).
pub fn parse_ms(text: &str) -> Result<i64> {
    let bytes = text.as_bytes();
    ensure!(bytes.len() >= 20, "{text:?}: too short for RFC 3339");
    let number = |range: std::ops::Range<usize>| -> Result<i64> {
        let part = text.get(range.clone()).context("not ASCII")?;
        ensure!(
            part.bytes().all(|b| b.is_ascii_digit()),
            "{text:?}: {part:?} is not a number"
        );
        part.parse::<i64>()
            .with_context(|| format!("{text:?}: {part:?}"))
    };
    ensure!(
        bytes[4] == b'-' && bytes[7] == b'-' && matches!(bytes[10], b'T' | b't'),
        "{text:?}: not YYYY-MM-DDTHH:MM:SS"
    );
    ensure!(
        bytes[13] == b':' && bytes[16] == b':',
        "{text:?}: not HH:MM:SS"
    );
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day),
        "{text:?}: bad date"
    );
    ensure!(
        hour < 24 && minute < 60 && second < 61,
        "{text:?}: bad time"
    );
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        ensure!(digits > 0, "{text:?}: empty fraction");
        let mut padded: String = fraction[..digits].chars().take(3).collect();
        while padded.len() < 3 {
            padded.push('0');
        }
        millis = padded.parse::<i64>()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            ensure!(
                rb.len() == 6 && matches!(rb[0], b'+' | b'-') && rb[3] == b':',
                "{text:?}: bad offset {rest:?}"
            );
            let hours: i64 = rest[1..3].parse()?;
            let minutes: i64 = rest[4..6].parse()?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ms: i64) -> String {
    format_ms_offset(ms, 0)
}

/// Formats the same instant in another UTC offset (minutes east), e.g. `+02:00`.
pub fn format_ms_offset(ms: i64, offset_minutes: i64) -> String {
    let local = ms + offset_minutes * 60_000;
    let days = local.div_euclid(86_400_000);
    let in_day = local.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second, millis) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let zone = if offset_minutes == 0 {
        "Z".to_string()
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.abs();
        format!("{sign}{:02}:{:02}", abs / 60, abs % 60)
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}{zone}")
}

/// The UTC date (`YYYY-MM-DD`) of an instant, shifted by `days_delta` days.
pub fn date_of(ms: i64, days_delta: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000) + days_delta);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Milliseconds since the epoch now, from the local clock.
pub fn now_ms() -> Result<i64> {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    match i64::try_from(elapsed.as_millis()) {
        Ok(ms) => Ok(ms),
        Err(_) => bail!("the clock is too far in the future"),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() -> Result<()> {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z")?, 0);
        assert_eq!(parse_ms("2026-03-18T14:30:00Z")?, 1_773_844_200_000);
        assert_eq!(parse_ms("2026-03-18T14:30:00.123456Z")?, 1_773_844_200_123);
        assert_eq!(parse_ms("2026-03-18T16:30:00.5+02:00")?, 1_773_844_200_500);
        assert_eq!(parse_ms("2024-02-29T23:59:59.999Z")? % 1000, 999);
        for ms in [0, 1_773_844_200_123, 1_709_251_199_999, 951_782_400_000] {
            assert_eq!(parse_ms(&format_ms(ms))?, ms);
            assert_eq!(parse_ms(&format_ms_offset(ms, 120))?, ms);
            assert_eq!(parse_ms(&format_ms_offset(ms, -330))?, ms);
        }
        assert_eq!(format_ms(1_773_844_200_123), "2026-03-18T14:30:00.123Z");
        assert_eq!(date_of(1_773_844_200_123, 0), "2026-03-18");
        assert_eq!(date_of(1_773_844_200_123, -18), "2026-02-28");
        assert!(parse_ms("2026-03-18").is_err());
        assert!(parse_ms("2026-13-18T00:00:00Z").is_err());
        Ok(())
    }
}
