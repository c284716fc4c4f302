//! ZODB transaction ids on the ZEO face.
//!
//! A ZEO tid is a ZODB `TimeStamp`: 8 bytes compared as a big-endian integer, the high 32 bits
//! the minutes since 1900-01-01 UTC (`((year-1900)*12 + month-1)*31 + day-1` days of 31, then
//! hours, then minutes), the low 32 bits the fraction of the minute in units of 60 s / 2^32.
//!
//! The store's tids are ZEO tids plus [`OFFSET`] ([`to_store`], [`to_zeo`]): the epoch markers
//! a fresh cluster writes while it forms (one per election, at store tids 1, 2, ...) and the
//! first oid blocks all lie below it and show as `z64`, ZODB's "no transaction", so a fresh
//! cluster looks like a fresh ZODB storage, and a restore of the explicit tids 1, 2, 3
//! (ZODB's tests do it) still fits above them. Wall-clock tids are about 2^58, far from 2^62.

use storage::Tid;

/// One minute in ZEO tid units (the low word is a fraction of a minute).
pub const MINUTE: u64 = 1 << 32;

/// Store tid = ZEO tid + `OFFSET`.
pub const OFFSET: u64 = 1 << 20;

/// The ZEO tid with a store tid `s` (`z64` for everything up to `OFFSET`).
pub fn to_zeo(s: Tid) -> [u8; 8] {
    s.0.saturating_sub(OFFSET).to_be_bytes()
}

/// The store tid of a ZEO tid, saturated at `limit` (ZODB's `maxtid` and anything above
/// what the store can hold mean "the newest").
pub fn to_store(z: &[u8; 8], limit: Tid) -> Tid {
    let v = u64::from_be_bytes(*z);
    Tid(v.saturating_add(OFFSET).min(limit.0))
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian), by the usual era arithmetic.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The ZEO tid of a wall-clock time given as nanoseconds since the Unix epoch.
pub fn timestamp(unix_nanos: u128) -> u64 {
    let secs = (unix_nanos / 1_000_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let minutes = ((((y - 1900) * 12 + m as i64 - 1) * 31 + d as i64 - 1) * 24 + in_day / 3600)
        * 60
        + (in_day % 3600) / 60;
    let sec_in_minute = (in_day % 60) as u128 * 1_000_000_000 + unix_nanos % 1_000_000_000;
    // The fraction of the minute in units of 60 s / 2^32, truncated as ZODB does.
    let low = (sec_in_minute << 32) / 60_000_000_000;
    ((minutes.max(0) as u64) << 32) | (low as u64).min(u32::MAX as u64)
}

/// The time of a ZEO tid, in seconds since the Unix epoch (ZODB's `TimeStamp.timeTime()`,
/// which `undoLog` and `history` report).
pub fn seconds(z: u64) -> f64 {
    let mut minutes = (z >> 32) as i64;
    let low = (z & 0xffff_ffff) as f64;
    let minute = minutes % 60;
    minutes /= 60;
    let hour = minutes % 24;
    minutes /= 24;
    let day = minutes % 31;
    minutes /= 31;
    let month = minutes % 12;
    let year = minutes / 12 + 1900;
    let days = days_from_civil(year, month as u32 + 1, day as u32 + 1);
    (days * 86_400 + hour * 3600 + minute * 60) as f64 + low * 60.0 / 4_294_967_296.0
}

/// The wall clock in nanoseconds since the Unix epoch. The ZEO face is a shell: it reads
/// the clock and passes the reading to the replica core (`TidChoice::AtLeast`), which never
/// reads one itself.
#[allow(clippy::disallowed_methods)]
pub fn wall_clock_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The current wall clock as a ZEO tid.
pub fn now() -> u64 {
    timestamp(wall_clock_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_timestamp_round_trips() {
        // 040d6e755dbdb944 is 2026-12-02 15:49:21.970572 UTC (recorded from a stock server).
        let z = 0x040d_6e75_5dbd_b944u64;
        let t = seconds(z);
        let expect = days_from_civil(2026, 12, 2) as f64 * 86_400.0 + 15.0 * 3600.0 + 49.0 * 60.0;
        assert!((t - expect - 21.970572).abs() < 1e-5, "{t}");
        let nanos = (t * 1e9) as u128;
        let back = timestamp(nanos);
        assert!(back.abs_diff(z) < 100, "{back:x}");
    }

    #[test]
    fn timestamps_increase_with_time_and_calendar() {
        let mut prev = 0;
        // Across minute, day, month and year boundaries (and a leap day).
        for secs in [
            1_700_000_000u128,
            1_700_000_059,
            1_700_000_060,
            1_709_164_799, // 2024-02-28 23:59:59
            1_709_164_800, // 2024-02-29
            1_709_251_200, // 2024-03-01
            1_735_689_599, // 2024-12-31 23:59:59
            1_735_689_600, // 2025-01-01
        ] {
            let z = timestamp(secs * 1_000_000_000);
            assert!(z > prev, "{secs}");
            assert!((seconds(z) - secs as f64).abs() < 1e-6, "{secs}");
            prev = z;
        }
    }

    #[test]
    fn store_and_zeo_tids_are_offset() {
        assert_eq!(to_zeo(Tid(1)), [0; 8]);
        assert_eq!(to_zeo(Tid(OFFSET)), [0; 8]);
        assert_eq!(to_zeo(Tid(OFFSET + 1)), 1u64.to_be_bytes());
        assert_eq!(to_zeo(Tid::ZERO), [0; 8]);
        assert_eq!(to_store(&[0; 8], Tid(1 << 62)), Tid(OFFSET));
        assert_eq!(to_store(&1u64.to_be_bytes(), Tid(1 << 62)), Tid(OFFSET + 1));
        let maxtid = [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(to_store(&maxtid, Tid(1 << 62)), Tid(1 << 62));
        assert_eq!(to_store(&[0xff; 8], Tid(1 << 62)), Tid(1 << 62));
    }
}
