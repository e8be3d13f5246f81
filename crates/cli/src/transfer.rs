//! How uploads and downloads split work: files up to [`SMALL_FILE`] travel
//! many per request (framed), larger ones one per request, streamed, with
//! [`concurrency`] requests in flight either way. A request that fails
//! for a passing reason is sent again ([`retrying`]).

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

/// Times a request is sent in all before its transient failure is final.
pub const ATTEMPTS: u32 = 4;

/// Runs `attempt` until it succeeds, fails for good, or has failed
/// [`ATTEMPTS`] times for a passing reason
/// ([`satchel_client::ClientError::is_transient`] anywhere in the error's
/// chain), waiting 1, 2, then 4 seconds between attempts and saying so on
/// stderr. `what` names the work in that warning.
pub async fn retrying<T, F, Fut>(what: &str, attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    retrying_if(what, &is_transient, attempt).await
}

/// As [`retrying`], resending only after failures `transient` accepts.
pub async fn retrying_if<T, F, Fut>(
    what: &str,
    transient: &dyn Fn(&anyhow::Error) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    retrying_after(
        what,
        std::time::Duration::from_secs(1),
        transient,
        &mut attempt,
    )
    .await
}

async fn retrying_after<T, F, Fut>(
    what: &str,
    first_wait: std::time::Duration,
    transient: &dyn Fn(&anyhow::Error) -> bool,
    attempt: &mut F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut wait = first_wait;
    for n in 1.. {
        match attempt().await {
            Err(e) if n < ATTEMPTS && transient(&e) => {
                eprintln!(
                    "warning: {what} failed ({e:#}); trying again in {wait:?} (attempt {} of {ATTEMPTS})",
                    n + 1
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            r => return r,
        }
    }
    unreachable!("the loop returns by its last attempt")
}

/// Whether an error is a transient failure of a request.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<satchel_client::ClientError>()
            .is_some_and(satchel_client::ClientError::is_transient)
    })
}

/// Files at least this large may be downloaded as pieces, several at once
/// ([`ranged_downloads`]).
pub const RANGED_MIN: u64 = 32 * 1024 * 1024;
/// Bytes in one piece of a ranged download: one range request, held in
/// memory until it is written and hashed in order (at most
/// [`concurrency`] pieces per file). Each range request costs the server
/// a read of the file's whole recipe, so pieces are not small: 1 GiB in
/// 4 MiB pieces took 3.3-3.7 s on loopback, in 16 MiB pieces 2.3-3.5 s.
pub const PIECE: u64 = 8 * 1024 * 1024;

/// Whether large files are downloaded as pieces, several at once, from
/// the server at `base`: `SATCHEL_RANGES=1` always, `0` never, and by
/// default only from a server on another machine. Pieces overcome what
/// limits one connection across a network (latency times window,
/// per-flow limits); against a server on this machine they only share
/// the same cores, and cost more than one stream (a 1 GiB download on
/// loopback, 2 cores: 1.4-1.7 s as one stream, 2.3-3.7 s in pieces).
pub fn ranged_downloads(base: &str) -> bool {
    match std::env::var("SATCHEL_RANGES").as_deref().map(str::trim) {
        Ok("1") => return true,
        Ok("0") => return false,
        Ok(v) if !v.is_empty() => {
            eprintln!(
                "warning: SATCHEL_RANGES={v:?} is not 0 or 1; deciding by the server's address"
            );
        }
        _ => {}
    }
    !on_this_machine(base)
}

/// Whether the URL names a loopback host.
fn on_this_machine(base: &str) -> bool {
    match reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// The pieces of a file of `size` bytes, `start..end` in order.
pub fn pieces(size: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(PIECE))
        .map(|i| (i * PIECE, ((i + 1) * PIECE).min(size)))
        .collect()
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
    fn loopback_servers_are_on_this_machine() {
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9/api",
        ] {
            assert!(on_this_machine(local), "{local}");
        }
        for remote in [
            "http://10.0.0.2:80",
            "https://satchel.example.com",
            "http://[2001:db8::1]/",
        ] {
            assert!(!on_this_machine(remote), "{remote}");
        }
    }

    fn api(status: u16) -> anyhow::Error {
        anyhow::Error::new(satchel_client::ClientError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
            candidates: None,
        })
        .context("sending something")
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_and_a_final_one_is_not() {
        let quick = std::time::Duration::from_millis(1);
        // 503 twice, then success: three attempts.
        let mut calls = 0;
        let r = retrying_after("x", quick, &is_transient, &mut || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(api(503))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        // 400 is final: one attempt.
        let mut calls = 0;
        let r: anyhow::Result<()> = retrying_after("x", quick, &is_transient, &mut || {
            calls += 1;
            async { Err(api(400)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        // 503 for ever: ATTEMPTS attempts, then the error.
        let mut calls = 0;
        let r: anyhow::Result<()> = retrying_after("x", quick, &is_transient, &mut || {
            calls += 1;
            async { Err(api(503)) }
        })
        .await;
        assert!(format!("{:#}", r.unwrap_err()).contains("sending something"));
        assert_eq!(calls, ATTEMPTS);
    }

    #[test]
    fn large_downloads_split_into_pieces() {
        assert!(pieces(0).is_empty());
        assert_eq!(pieces(1), vec![(0, 1)]);
        assert_eq!(pieces(PIECE), vec![(0, PIECE)]);
        let p = pieces(3 * PIECE + 5);
        assert_eq!(p.len(), 4);
        assert_eq!(p[3], (3 * PIECE, 3 * PIECE + 5));
        assert!(p.windows(2).all(|w| w[0].1 == w[1].0));
    }

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
