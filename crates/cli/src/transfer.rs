//! How uploads and downloads split work: files up to [`SMALL_FILE`] travel
//! many per request (framed), larger ones one per request, streamed, with
//! [`concurrency`] requests in flight either way.

/// Files up to this size travel framed in batches.
pub const SMALL_FILE: u64 = 1024 * 1024;
/// Target size of one batch request.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Most files in one batch request.
pub const BATCH_FILES: usize = 2000;
/// Requests in flight by default.
pub const CONCURRENCY: usize = 4;

/// Requests in flight per upload or download, and chunk requests per
/// large file within it: `SATCHEL_CONCURRENCY` (1 to 64), else
/// [`CONCURRENCY`]. At 1 a transfer sends one request at a time, in a
/// fixed order (the durability test relies on that). Any other value is
/// reported once and ignored.
pub fn concurrency() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| match std::env::var("SATCHEL_CONCURRENCY") {
        Err(_) => CONCURRENCY,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                eprintln!(
                    "warning: SATCHEL_CONCURRENCY={v:?} is not a number from 1 to 64; using {CONCURRENCY}"
                );
                CONCURRENCY
            }
        },
    })
}

/// A unit of transfer work.
pub enum Work<T> {
    /// Several small items in one request.
    Batch(Vec<T>),
    /// One large item, streamed.
    Single(T),
}

/// Groups `items` into batches of small items and singles of large ones.
pub fn plan<T>(items: impl IntoIterator<Item = T>, size: impl Fn(&T) -> u64) -> Vec<Work<T>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for item in items {
        let n = size(&item);
        if n > SMALL_FILE {
            out.push(Work::Single(item));
            continue;
        }
        if !batch.is_empty() && (batch_bytes + n > BATCH_BYTES || batch.len() >= BATCH_FILES) {
            out.push(Work::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += n;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(Work::Batch(batch));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_batches_and_singles() {
        let mut sizes = vec![10, SMALL_FILE + 1];
        sizes.extend([SMALL_FILE; 8]);
        let work = plan(sizes, |s| *s);
        let shape: Vec<String> = work
            .iter()
            .map(|w| match w {
                Work::Batch(b) => format!("B{}", b.len()),
                Work::Single(_) => "S".into(),
            })
            .collect();
        // Singles go out at once; the batch closes when 8 MiB would be exceeded.
        assert_eq!(shape, ["S", "B8", "B1"]);
        let many = plan(vec![1u64; 4500], |s| *s);
        assert_eq!(many.len(), 3);
    }
}
