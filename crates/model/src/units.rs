//! Quantities written for people, the same in the CLI, the runner's
//! output and the web UI.

/// A byte count in binary units with one decimal: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A signed size change: `+1.2 KiB`, `-300 B`, `±0 B`.
pub fn human_delta(d: i128) -> String {
    let n = human_bytes(u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX));
    match d.signum() {
        1 => format!("+{n}"),
        -1 => format!("-{n}"),
        _ => "±0 B".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_carry_their_sign() {
        assert_eq!(human_delta(2048), "+2.0 KiB");
        assert_eq!(human_delta(-300), "-300 B");
        assert_eq!(human_delta(0), "±0 B");
    }

    #[test]
    fn bytes_read_as_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
