//! Identifiers and random secrets.
//!
//! Ids are 32 lowercase hex characters: 48 bits of milliseconds since the Unix
//! epoch followed by 80 random bits. They sort by creation time (handy for
//! "most recent" rules and index locality), cannot be enumerated, and are plain
//! text in every database.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length in characters of an id produced by [`new_id`].
pub const ID_LEN: usize = 32;

/// A new time-ordered random id.
pub fn new_id() -> String {
    let ms = now_millis() as u64 & 0xffff_ffff_ffff;
    let mut rnd = [0u8; 10];
    getrandom::fill(&mut rnd).expect("the operating system's random source failed");
    let mut s = format!("{ms:012x}");
    for b in rnd {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new UUID (version 7: milliseconds, then random bits), as CI systems
/// name builds (`0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b`).
pub fn new_uuid() -> String {
    let ms = now_millis() as u64 & 0xffff_ffff_ffff;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    getrandom::fill(&mut b[6..]).expect("the operating system's random source failed");
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether `s` looks like an id made by [`new_id`] (length and alphabet only).
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `n` random bytes as lowercase hex: for tokens and other secrets.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with millisecond
/// precision, e.g. `2026-11-22T12:29:46.123Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Reads back what [`rfc3339_millis`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`);
/// `None` for anything else.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24
        || &b[4..5] != b"-"
        || &b[7..8] != b"-"
        || &b[10..11] != b"T"
        || &b[23..] != b"Z"
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant), the inverse of civil_from_days.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_the_version_7_layout() {
        let u = new_uuid();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{u}"
        );
        assert!(parts[2].starts_with('7'), "{u}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{u}"
        );
        assert_ne!(u, new_uuid());
        assert!(crate::names::validate_key("build id", &u).is_ok());
    }

    #[test]
    fn rfc3339_millis_reads_back() {
        for ms in [0, 951_782_400_123, 1_700_000_000_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_millis(&rfc3339_millis(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339_millis("2026-13-01T00:00:00.000Z"), None);
        assert_eq!(parse_rfc3339_millis("2026-01-01 00:00:00.000Z"), None);
        assert_eq!(parse_rfc3339_millis("2026-01-01T00:00:00.+00Z"), None);
    }

    #[test]
    fn ids_are_ordered_and_well_formed() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert!(is_id(&a) && is_id(&b));
        assert!(a < b);
        assert!(!is_id("../etc"));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_350_586_123),
            "2026-11-22T12:29:46.123Z"
        );
    }
}
