//! The trust score: a deterministic, integer-only function of an agent's events (their
//! severities and `created_at`) and of a point in time, the `created_at` of the ledger position
//! the score is computed at. `docs/TRUST_SCORE.md` states the same formula in prose.
//!
//! ```text
//! day(t)      = floor(t / 86 400 000)                  (UTC days since 1970-01-01)
//! age         = day(as_of) - day(created_at)           (events with 0 <= age < 90 count)
//! recency     = 90 - age                               (90 today … 1 at 89 days old)
//! good        = Σ recency × [severity = info]
//! bad         = Σ recency × penalty(severity)          penalty: info 0, warning 1, error 4,
//!                                                                critical 16
//! score       = floor(1000 × (good + 450) / (good + bad + 900))
//! ```
//!
//! The prior (450 good out of 900, worth ten events of today) makes an agent with no recent
//! events score 500 and makes volume count: ten successes today give 1000 × 1350 / 1800 = 750,
//! a hundred give 956. The score is in 0..=999: 1000 is approached but never reached.
//! Every quantity is an unsigned integer (`u128` for sums, so nothing overflows for any `u64`
//! counts), so every replica and every third party gets the same bits.
//!
//! The state machine keeps, per agent and per day, the count of events of each severity (see
//! `raft-store`): [`score`] reads at most [`WINDOW_DAYS`] of those, whatever the history's
//! length. A third party rebuilds the same day counts from the events with [`tally`].

/// Milliseconds in a day: days are UTC days since 1970-01-01.
pub const DAY_MS: i64 = 86_400_000;

/// How many days count, the `as_of` day included.
pub const WINDOW_DAYS: i64 = 90;

/// Scores are in `0..SCORE_SCALE` (0..=999).
pub const SCORE_SCALE: u128 = 1000;

/// Weight of the prior, in recency units: ten events of today's weight (`10 × WINDOW_DAYS`).
pub const PRIOR_WEIGHT: u128 = 900;

/// The good part of the prior: half of it, so that no evidence scores 500.
pub const PRIOR_GOOD: u128 = PRIOR_WEIGHT / 2;

/// Penalty per event, by severity code (0 info, 1 warning, 2 error, 3 critical).
pub const SEVERITY_PENALTY: [u128; 4] = [0, 1, 4, 16];

/// The day (UTC days since 1970-01-01, floored) of a time in milliseconds since the epoch.
pub fn day_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

/// How many of an agent's events of one day had each severity: `counts[code]`, with the codes
/// of the event encoding (0 info, 1 warning, 2 error, 3 critical).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// UTC days since 1970-01-01 ([`day_of`]).
    pub day: i64,
    pub counts: [u64; 4],
}

/// A score and the intermediate sums that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    /// `floor(1000 × (good + 450) / (good + bad + 900))`, in 0..=999.
    pub score: u64,
    /// Σ recency × (info events).
    pub good: u128,
    /// Σ recency × penalty(severity).
    pub bad: u128,
    /// How many events fell inside the window.
    pub events_in_window: u128,
}

/// The recency weight of events of `day` seen from `as_of_day`: `90 - age` for an age of
/// 0..=89 days, `None` outside the window (older, or after `as_of_day`).
pub fn recency(as_of_day: i64, day: i64) -> Option<u128> {
    let age = as_of_day.checked_sub(day)?;
    if (0..WINDOW_DAYS).contains(&age) {
        u128::try_from(WINDOW_DAYS - age).ok()
    } else {
        None
    }
}

/// The trust score at time `as_of_ms` (the `created_at` of the ledger position), from an
/// agent's day counts. Days outside the window are ignored; a day may appear more than once
/// (its counts add up). Pure and integer-only.
pub fn score(as_of_ms: i64, days: &[DayCounts]) -> Score {
    let as_of_day = day_of(as_of_ms);
    let mut good: u128 = 0;
    let mut bad: u128 = 0;
    let mut events_in_window: u128 = 0;
    for day in days {
        let Some(weight) = recency(as_of_day, day.day) else {
            continue;
        };
        for (code, &count) in day.counts.iter().enumerate() {
            let count = u128::from(count);
            events_in_window += count;
            if code == 0 {
                good += weight * count;
            }
            bad += weight * count * SEVERITY_PENALTY[code];
        }
    }
    let score = SCORE_SCALE * (good + PRIOR_GOOD) / (good + bad + PRIOR_WEIGHT);
    Score {
        // Below SCORE_SCALE: good + 450 < good + bad + 900.
        score: u64::try_from(score).unwrap_or(u64::MAX),
        good,
        bad,
        events_in_window,
    }
}

/// Day counts of a list of `(created_at_ms, severity code)` pairs, in day order. Severity
/// codes above 3 are an error (the event encoding has no others).
pub fn tally(
    events: impl IntoIterator<Item = (i64, u8)>,
) -> Result<Vec<DayCounts>, crate::event::EventError> {
    let mut days: std::collections::BTreeMap<i64, [u64; 4]> = std::collections::BTreeMap::new();
    for (created_at_ms, severity) in events {
        let slot = usize::from(severity);
        if slot >= 4 {
            return Err(crate::event::EventError::Severity(severity));
        }
        days.entry(day_of(created_at_ms)).or_default()[slot] += 1;
    }
    Ok(days
        .into_iter()
        .map(|(day, counts)| DayCounts { day, counts })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, day 20454

    fn at(days: i64, ms: i64) -> i64 {
        T0 + days * DAY_MS + ms
    }

    #[test]
    fn no_evidence_is_500() {
        assert_eq!(score(T0, &[]).score, 500);
        // Only events outside the window: the same.
        let old = tally([(at(-90, 0), 3), (at(1, 0), 3)]).unwrap();
        assert_eq!(score(T0, &old).score, 500);
        assert_eq!(score(T0, &old).events_in_window, 0);
    }

    #[test]
    fn the_worked_example_of_the_docs() {
        // docs/TRUST_SCORE.md: as of 2026-01-31T12:00Z (day 20484). Day 20484: 5 info, 1 error;
        // day 20474 (age 10): 3 info, 1 warning; day 20454 (age 30): 1 critical;
        // day 20394 (age 90): 7 critical (outside the window).
        let events = [
            (at(30, 1_000), 0),
            (at(30, 2_000), 0),
            (at(30, 3_000), 0),
            (at(30, 4_000), 0),
            (at(30, 5_000), 0),
            (at(30, 6_000), 2),
            (at(20, 0), 0),
            (at(20, 1), 0),
            (at(20, 2), 0),
            (at(20, 3), 1),
            (at(0, 0), 3),
        ];
        let mut all: Vec<(i64, u8)> = events.to_vec();
        all.extend((0..7).map(|i| (at(-60, i), 3)));
        let days = tally(all).unwrap();
        let result = score(at(30, 43_200_000), &days);
        // good = 90×5 + 80×3 = 690; bad = 90×4 + 80×1 + 60×16 = 1400.
        assert_eq!(result.good, 690);
        assert_eq!(result.bad, 1400);
        assert_eq!(result.events_in_window, 11);
        // floor(1000 × 1140 / 2990) = floor(381.27…) = 381.
        assert_eq!(result.score, 381);
    }

    #[test]
    fn volume_and_bounds() {
        let ten = tally((0..10).map(|i| (T0 + i, 0))).unwrap();
        assert_eq!(score(T0, &ten).score, 750);
        let hundred = tally((0..100).map(|i| (T0 + i, 0))).unwrap();
        assert_eq!(score(T0, &hundred).score, 954);
        // Huge counts neither overflow nor reach 1000.
        let huge = [DayCounts {
            day: day_of(T0),
            counts: [u64::MAX, 0, 0, 0],
        }];
        assert_eq!(score(T0, &huge).score, 999);
        let worst = [DayCounts {
            day: day_of(T0),
            counts: [0, 0, 0, u64::MAX],
        }];
        assert_eq!(score(T0, &worst).score, 0);
        let mixed = [DayCounts {
            day: day_of(T0),
            counts: [u64::MAX; 4],
        }];
        assert!(score(T0, &mixed).score < 1000);
    }

    #[test]
    fn recency_window_edges() {
        let day = day_of(T0);
        assert_eq!(recency(day, day), Some(90));
        assert_eq!(recency(day, day - 89), Some(1));
        assert_eq!(recency(day, day - 90), None);
        assert_eq!(recency(day, day + 1), None);
        assert_eq!(recency(i64::MIN, i64::MAX), None);
        // Days are floored, also before 1970.
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
    }

    #[test]
    fn tally_rejects_unknown_severities() {
        assert!(tally([(T0, 4)]).is_err());
    }
}
