//! HTTP `Range: bytes=…` requests (RFC 9110 §14), parsed against a file's
//! size into one half-open byte range. One owner, so the server answers
//! every file download the same way and fuzzing covers the parser.
//!
//! Only single ranges are served; a header with several ranges asks for
//! something we may ignore (RFC 9110 lets a server send the whole file).

/// The header cannot be satisfied for a file of this size (answer 416).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("range {header:?} does not fit a file of {size} bytes")]
pub struct Unsatisfiable {
    /// The header as received (lossy if not UTF-8).
    pub header: String,
    /// The file's size.
    pub size: u64,
}

/// Parses a `Range` header value against `size`: `Ok(None)` means serve the
/// whole file (several ranges, or a unit other than bytes), `Ok(Some((start, end)))` a range with
/// `start < end <= size`.
pub fn parse(header: &[u8], size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let unsatisfiable = || Unsatisfiable {
        header: String::from_utf8_lossy(header).into_owned(),
        size,
    };
    let s = std::str::from_utf8(header).map_err(|_| unsatisfiable())?;
    let Some(spec) = s.trim().strip_prefix("bytes=") else {
        // RFC 9110 §14.2: a range unit the server does not know is ignored.
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let number = |t: &str| -> Result<u64, Unsatisfiable> {
        // `u64::from_str` takes a leading `+`; the grammar is digits only.
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(unsatisfiable());
        }
        // More digits than a u64 holds still name a position past any file.
        Ok(t.parse().unwrap_or(u64::MAX))
    };
    let (start, end) = if a.is_empty() {
        // A suffix: the last `n` bytes.
        let n = number(b)?;
        if n == 0 {
            return Err(unsatisfiable());
        }
        (size.saturating_sub(n), size)
    } else {
        let start = number(a)?;
        let end = if b.is_empty() {
            size
        } else {
            let last = number(b)?;
            if last < start {
                return Err(unsatisfiable());
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ranges() {
        let ok = |h: &str, size| parse(h.as_bytes(), size).unwrap();
        assert_eq!(ok("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(ok("bytes=90-", 100), Some((90, 100)));
        assert_eq!(ok("bytes=-10", 100), Some((90, 100)));
        assert_eq!(ok("bytes=-1000", 100), Some((0, 100)));
        assert_eq!(ok("bytes=0-0,5-6", 100), None);
        assert_eq!(ok("items=0-1", 100), None, "unknown units are ignored");
        assert_eq!(ok(" bytes=5-500 ", 100), Some((5, 100)));
        // Regression: `last + 1` overflowed (a panic in debug builds, an
        // empty range in release).
        assert_eq!(ok("bytes=0-18446744073709551615", 100), Some((0, 100)));
        assert_eq!(ok("bytes=0-99999999999999999999999", 100), Some((0, 100)));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=-0",
            "bytes=",
            "bytes=-",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=a-b",
            "bytes=0-1-2",
            "bytes=99999999999999999999-",
        ] {
            assert!(parse(bad.as_bytes(), 100).is_err(), "{bad}");
        }
        assert!(parse(b"bytes=0-", 0).is_err(), "nothing fits an empty file");
        assert!(parse(b"bytes=\xff", 10).is_err());
    }
}
