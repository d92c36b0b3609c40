//! Dates for what alfa writes (reports, recipes), in UTC from the system clock: a
//! civil-calendar conversion is a few lines, not worth a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-26 04:05 UTC`.
pub fn utc_minute(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let minutes = seconds % 86_400 / 60;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", minutes / 60, minutes % 60)
}

/// `2026-11-26`.
pub fn utc_date(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// (year, month, day) of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_are_the_calendar_dates() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(utc_minute(at(0)), "1970-01-01 00:00 UTC");
        // 2000-02-29 (a leap day of a century leap year) 23:59.
        assert_eq!(utc_minute(at(951_868_740)), "2000-02-29 23:59 UTC");
        assert_eq!(utc_date(at(1_795_660_800)), "2026-11-26");
        assert_eq!(utc_date(at(1_709_251_200)), "2024-03-01");
    }
}
