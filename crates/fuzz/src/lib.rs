//! Fuzz targets: one function per parser of untrusted input.
//!
//! Each takes arbitrary bytes, feeds them to the real parser and checks
//! the properties a caller relies on, panicking when one breaks (a crash
//! for libFuzzer). `fuzz/` wraps each in a libFuzzer binary
//! (`bash scripts/fuzz.sh` runs them for as long as asked), and
//! `tests/replay.rs` runs every file of each target's corpus and
//! regressions on stable as part of the test suite. The list of targets is
//! [`TARGETS`]; a target added here without a corpus fails the replay.

use satchel_model::{expr, frames, glob, ignore, path, range};

/// A fuzz target: panics when its parser breaks a property.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `fuzz/fuzz_targets/NAME.rs` and
/// of its `fuzz/corpus/NAME` directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("glob", glob_target),
    ("path", path_target),
    ("expr", expr_target),
    ("ignore", ignore_target),
    ("pipeline", pipeline_target),
    ("azure", azure_target),
    ("github", github_target),
    ("buildkite", buildkite_target),
    ("flow", flow_target),
    ("manifest", manifest_target),
    ("range", range_target),
    ("block_list", block_list_target),
    ("pack_index", pack_index_target),
    ("blob_batch", blob_batch_target),
    ("file_batch", file_batch_target),
    ("chunk_list", chunk_list_target),
    ("condition", condition_target),
];

/// Splits at the first NUL: two inputs from one.
fn two(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Glob patterns against paths; an escaped valid path matches itself.
pub fn glob_target(data: &[u8]) {
    let (p, q) = two(data);
    let (Ok(p), Ok(q)) = (std::str::from_utf8(p), std::str::from_utf8(q)) else {
        return;
    };
    if let Ok(g) = glob::Glob::new(p) {
        let _ = g.is_match(q);
        let _ = (g.literal_prefix(), g.literal_path(), g.has_wildcards());
    }
    if path::validate(q).is_ok() {
        if let Ok(g) = glob::Glob::new(&glob::escape(q)) {
            assert!(g.is_match(q), "escaped {q:?} does not match itself");
            assert!(!g.has_wildcards(), "escaped {q:?} has wildcards");
        }
    }
}

/// Path normalization: what it accepts is valid and normalizes to itself.
pub fn path_target(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = path::normalize(s) {
        assert!(
            path::validate(&n).is_ok(),
            "{s:?} normalized to invalid {n:?}"
        );
        assert_eq!(
            path::normalize(&n).as_deref(),
            Ok(n.as_str()),
            "not idempotent"
        );
    }
    if let Ok(c) = path::clean_relative(s) {
        assert!(path::validate(&c).is_ok(), "{s:?} cleaned to invalid {c:?}");
    }
    let _ = path::split(s);
}

/// `$[…]` references: parsing never panics, and escaped text survives
/// substitution unchanged.
pub fn expr_target(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = expr::Reference::parse(s);
    let _ = expr::find(s);
    let _ = expr::substitute(s, |r| Ok::<_, ()>(format!("{r:?}")));
    let back = expr::substitute(&expr::escape(s), |_| Err(()));
    assert_eq!(back.as_deref(), Ok(s), "escape does not round-trip");
}

/// `.artifactignore` files and the paths they are asked about.
pub fn ignore_target(data: &[u8]) {
    let (rules, p) = two(data);
    let (Ok(rules), Ok(p)) = (std::str::from_utf8(rules), std::str::from_utf8(p)) else {
        return;
    };
    if let Ok(r) = ignore::IgnoreRules::parse(rules) {
        let _ = r.is_ignored(p, false);
        let _ = r.is_ignored(p, true);
    }
}

/// Pipeline files.
pub fn pipeline_target(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = satchel_runner::pipeline::Pipeline::parse(s);
    }
}

/// Azure Pipelines files, and format detection: see [`translator`].
pub fn azure_target(data: &[u8]) {
    translator(
        data,
        satchel_runner::formats::Format::Azure,
        "azure-pipelines.yml",
    );
}

/// GitHub Actions workflows, and format detection: see [`translator`].
pub fn github_target(data: &[u8]) {
    translator(data, satchel_runner::formats::Format::Github, "ci.yml");
}

/// Buildkite pipelines, and format detection: see [`translator`].
pub fn buildkite_target(data: &[u8]) {
    translator(
        data,
        satchel_runner::formats::Format::Buildkite,
        "pipeline.yml",
    );
}

/// Alibaba Cloud Flow pipelines, and format detection: see [`translator`].
pub fn flow_target(data: &[u8]) {
    translator(data, satchel_runner::formats::Format::Flow, "flow.yml");
}

/// A foreign format's translator: translating never panics, and what
/// translates is a valid pipeline whose every step has one action
/// (`Pipeline::validated` checks the rest). Detection runs on the same
/// text.
fn translator(data: &[u8], format: satchel_runner::formats::Format, file: &str) {
    use satchel_runner::formats::{load, LoadOptions};
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new(file);
    for skip_unsupported in [false, true] {
        let opts = LoadOptions {
            format: Some(format),
            skip_unsupported,
            ..LoadOptions::default()
        };
        if let Ok(l) = load(path, s, &opts) {
            assert!(
                !l.pipeline.stages.is_empty(),
                "a translated pipeline has a stage"
            );
        }
    }
    let _ = load(path, s, &LoadOptions::default());
}

/// Upload manifests as the server receives them: JSON, then validation.
pub fn manifest_target(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<satchel_model::api::CreateUpload>(data) {
        if let Err(e) = satchel_server::validate_manifest(&m, &satchel_server::Limits::default()) {
            assert!(e.status.is_client_error(), "{}: {}", e.status, e.message);
        }
    }
}

/// `Range` headers: first 8 bytes the file size (LE), the rest the header.
pub fn range_target(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    if let Ok(Some((start, end))) = range::parse(&data[8..], size) {
        assert!(start < end && end <= size, "{start}..{end} of {size}");
    }
}

/// The GitHub Actions (Azure) block list XML.
pub fn block_list_target(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(ids) = satchel_server::gha::blob::parse_block_list(s) {
            assert!(ids.len() <= s.len(), "more ids than bytes");
        }
    }
}

/// Pack objects as the store reads them back: every entry it accepts lies
/// inside the pack's data. An input starting with `P` is made into a real
/// pack first (its bytes after the next 4 split into blobs), then damaged at
/// the offset those 4 bytes give, so the fuzzer reaches past the footer and
/// codec checks without seeds.
pub fn pack_index_target(data: &[u8]) {
    let codec = satchel_store::Codec::plain();
    let pack = match data {
        [b'P', a, b, c, d, rest @ ..] => {
            let blobs: Vec<_> = rest
                .chunks(7)
                .map(|b| {
                    let b = bytes::Bytes::copy_from_slice(b);
                    (satchel_store::Digest::of(&b), b)
                })
                .collect();
            let mut pack = satchel_store::pack::encode_pack(&codec, &blobs);
            let at = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
            if at / 8 < pack.len() {
                pack[at / 8] ^= 1 << (at % 8);
            } else if at.is_multiple_of(2) {
                pack.truncate(at % (pack.len() + 1));
            }
            pack
        }
        _ => data.to_vec(),
    };
    if let Ok(entries) = satchel_store::pack::read_index(&codec, &pack) {
        for (_, r) in entries {
            assert!(r.start <= r.end && r.end <= pack.len() as u64, "{r:?}");
        }
    }
}

/// Blob batch bodies (uploads): what splits into frames encodes back to
/// exactly the same bytes.
pub fn blob_batch_target(data: &[u8]) {
    if let Ok(parts) = frames::split_blob_batch(data) {
        let mut again = Vec::with_capacity(data.len());
        for (digest, content) in parts {
            frames::push_blob_frame(&mut again, &digest, content);
        }
        assert_eq!(again, data, "re-encoding differs");
    }
}

/// Binary chunk lists: what parses encodes back to exactly the same
/// bytes, and every length that is not whole records is refused.
pub fn chunk_list_target(data: &[u8]) {
    match frames::parse_chunk_list(data) {
        Ok(records) => {
            let mut again = Vec::with_capacity(data.len());
            for (size, digest) in records {
                frames::push_chunk_record(&mut again, size, &digest);
            }
            assert_eq!(again, data, "re-encoding differs");
        }
        Err(_) => assert_ne!(data.len() % frames::CHUNK_RECORD, 0),
    }
}

/// File batch bodies (downloads): the first byte says how many files, each
/// next byte one file's expected size; the rest is the body. Every frame
/// read has its expected size, and a body read to the end re-encodes to
/// itself.
pub fn file_batch_target(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let mut reader = frames::FileBatch::new(body);
    let mut again = Vec::new();
    for &size in sizes {
        match reader.next_frame(u64::from(size)) {
            Ok(content) => {
                assert_eq!(content.len(), usize::from(size));
                again.extend_from_slice(&frames::file_frame_header(u64::from(size)));
                again.extend_from_slice(content);
            }
            Err(_) => return,
        }
    }
    if reader.finish().is_ok() {
        assert_eq!(again, body, "re-encoding differs");
    }
}

/// Rule conditions (`source.build.branch == 'main' || …`): parsing never
/// panics; a parsed condition never holds for a reader whose build is
/// unknown (a condition is never met by not knowing), and evaluating it
/// against any build never panics.
pub fn condition_target(data: &[u8]) {
    use satchel_model::access::{BuildFacts, Condition, MAX_CONDITION_BYTES};
    let (text, facts) = two(data);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(c) = Condition::parse(text) else {
        return;
    };
    assert!(
        text.len() <= MAX_CONDITION_BYTES,
        "an over-long condition parsed"
    );
    assert!(
        !c.holds(&BuildFacts::default()),
        "{text:?} holds for an unknown build"
    );
    let f = String::from_utf8_lossy(facts);
    let mut parts = f.split('\n').map(str::to_string);
    let build = BuildFacts {
        pipeline: parts.next(),
        number: parts.next().and_then(|n| n.parse().ok()),
        branch: parts.next(),
        commit: parts.next(),
    };
    let _ = c.holds(&build);
}
