//! Clocks and dates, in one place: the monotonic clock the cores are driven by, the wall clock
//! that stamps records for display, and the UTC format of every log line (`2026-11-24T05:01:02.345Z`)
//! with its parser.

use crate::format::Millis;

/// Milliseconds of `CLOCK_BOOTTIME`: monotonic, and it keeps counting while the host sleeps or
/// the process is stopped, so a node that wakes from a freeze sees how long it was gone.
pub fn monotonic_ms() -> Millis {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is available on Linux");
    ts.tv_sec as Millis * 1000 + ts.tv_nsec as Millis / 1_000_000
}

/// Milliseconds since the Unix epoch, for display stamps only.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The fields of the UTC time `unix_ms`: year, month, day, hour, minute, second, millisecond.
fn civil(unix_ms: u64) -> [u64; 7] {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the inverse of `days_from_civil`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = (yoe + era * 400 + (month <= 2) as i64).clamp(0, 9999) as u64;
    [year, month, day, rem / 3600, rem % 3600 / 60, rem % 60, unix_ms % 1000]
}

/// `2026-11-24T05:01:02.345Z`
pub fn utc(unix_ms: u64) -> String {
    let mut buf = [0u8; 24];
    utc_into(unix_ms, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`utc`] into a fixed buffer, without allocating: for the one line a signal handler writes.
pub fn utc_into(unix_ms: u64, out: &mut [u8; 24]) {
    let widths = [4, 2, 2, 2, 2, 2, 3];
    let seps = [b'-', b'-', b'T', b':', b':', b'.', b'Z'];
    let mut at = 0;
    for ((value, width), sep) in civil(unix_ms).into_iter().zip(widths).zip(seps) {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        out[at] = sep;
        at += 1;
    }
}

/// Parses what [`utc`] prints back into Unix milliseconds.
pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(5..7)?, n(8..10)?);
    let secs = days * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    u64::try_from(secs * 1000 + n(20..23)?).ok()
}

/// The timestamp a log line starts with (`<utc> ...`).
pub fn line_ts(line: &str) -> Option<u64> {
    parse_utc(line.split(' ').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants_and_parses_back() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [0, 1, 951_782_400_000, 1_795_000_000_123, 4_102_444_799_999] {
            assert_eq!(parse_utc(&utc(ms)), Some(ms));
        }
        assert_eq!(parse_utc("2026-11-18 11:06:40.123Z"), None);
        assert_eq!(line_ts("2026-11-18T11:06:40.123Z sdc[x] hello"), Some(1_795_000_000_123));
        for ms in [0, 951_782_400_000, 1_795_000_000_123, 4_102_444_799_999] {
            let mut buf = [0u8; 24];
            utc_into(ms, &mut buf);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), utc(ms));
        }
    }
}
