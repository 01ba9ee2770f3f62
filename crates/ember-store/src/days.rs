//! UTC days, the unit of the ledger and of daily allocations: a Unix time's day and a day's
//! first millisecond.

/// Milliseconds in a day (UTC days have no leap seconds in Unix time).
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (`YYYY-MM-DD`) a Unix time in milliseconds falls on.
pub fn utc_day(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(DAY_MS);
    let date =
        time::Date::from_julian_day(UNIX_EPOCH_JULIAN_DAY + days as i32).unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The Unix time in milliseconds at which the UTC day `text` (`YYYY-MM-DD`) begins; none if
/// `text` is no calendar date written so.
pub fn utc_day_start_ms(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts.as_slice() else {
        return None;
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, day) = (year.parse().ok()?, day.parse().ok()?);
    let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY) * DAY_MS)
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days_turn_at_midnight() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_400_000 - 1), "1970-01-01");
        assert_eq!(utc_day(86_400_000), "1970-01-02");
        assert_eq!(utc_day(1_795_392_000_000), "2026-11-23");
        assert_eq!(utc_day(-1), "1969-12-31");
    }

    #[test]
    fn utc_days_are_checked_dates() {
        assert_eq!(utc_day_start_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(utc_day_start_ms("2026-11-23"), Some(1_795_392_000_000));
        assert_eq!(utc_day_start_ms("2026-02-30"), None);
        assert_eq!(utc_day_start_ms("2026-2-3"), None);
        assert_eq!(utc_day_start_ms("yesterday"), None);
    }
}
