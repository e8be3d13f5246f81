//! Content types of artifact files, guessed from the file extension.
//!
//! The table follows nginx's `mime.types` in spirit: plain types without
//! parameters (`text/plain`, not `text/plain; charset=utf-8`), with source code
//! and configuration files served as `text/plain` so browsers display rather
//! than run or download them.

/// The fallback for unknown or missing extensions.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The content type for `path` from its extension (case-insensitive), or
/// [`DEFAULT_CONTENT_TYPE`] when the extension is unknown or absent.
///
/// Only the part after the last `/` counts, and a leading dot does not start
/// an extension (`.bashrc` has none). `archive.tar.gz` is `application/gzip`.
pub fn content_type_for(path: &str) -> &'static str {
    let file = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return DEFAULT_CONTENT_TYPE;
    };
    if stem.is_empty() || ext.is_empty() || ext.len() > 16 {
        return DEFAULT_CONTENT_TYPE;
    }
    by_extension(&ext.to_ascii_lowercase())
}

fn by_extension(ext: &str) -> &'static str {
    match ext {
        // Text and documents.
        "txt" | "text" | "log" | "out" | "err" | "conf" | "cfg" | "ini" | "env" | "properties"
        | "lock" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "html" | "htm" | "shtml" => "text/html",
        "css" => "text/css",
        "js" | "mjs" | "cjs" => "text/javascript",
        "xml" | "xsd" | "xsl" | "plist" => "application/xml",
        "json" | "map" | "sarif" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "diff" | "patch" => "text/x-diff",
        "rtf" => "application/rtf",
        "vtt" => "text/vtt",
        "ics" => "text/calendar",

        // Source code: shown as text.
        "sh" | "bash" | "zsh" | "fish" | "ps1" | "bat" | "cmd" | "py" | "pyi" | "rs" | "go"
        | "java" | "kt" | "kts" | "scala" | "groovy" | "gradle" | "c" | "h" | "cc" | "cpp"
        | "cxx" | "hh" | "hpp" | "hxx" | "m" | "mm" | "cs" | "fs" | "swift" | "rb" | "pl"
        | "pm" | "php" | "lua" | "r" | "sql" | "ts" | "tsx" | "jsx" | "vue" | "svelte" | "dart"
        | "ex" | "exs" | "erl" | "hs" | "ml" | "mli" | "clj" | "zig" | "nim" | "proto"
        | "graphql" | "tf" | "hcl" | "cmake" | "mk" | "dockerfile" => "text/plain",

        // Images.
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" | "svgz" => "image/svg+xml",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",

        // Audio and video.
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "m4a" => "audio/mp4",

        // Fonts.
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",

        // Archives and packages.
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        "gz" | "tgz" => "application/gzip",
        "bz2" | "tbz2" => "application/x-bzip2",
        "xz" | "txz" => "application/x-xz",
        "zst" => "application/zstd",
        "lz4" => "application/x-lz4",
        "7z" => "application/x-7z-compressed",
        "rar" => "application/vnd.rar",
        "jar" | "war" | "ear" => "application/java-archive",
        "whl" | "nupkg" => "application/zip",
        "deb" => "application/vnd.debian.binary-package",
        "rpm" => "application/x-rpm",
        "apk" => "application/vnd.android.package-archive",
        "dmg" => "application/x-apple-diskimage",
        "iso" => "application/x-iso9660-image",
        "msi" => "application/x-msdownload",

        // Documents and binaries.
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "epub" => "application/epub+zip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "pem" | "crt" | "cer" => "application/x-x509-ca-cert",
        "sqlite" | "db" => "application/vnd.sqlite3",

        _ => DEFAULT_CONTENT_TYPE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_extensions() {
        let cases = [
            ("build.log", "text/plain"),
            ("a/b/notes.txt", "text/plain"),
            ("README.md", "text/markdown"),
            ("data.csv", "text/csv"),
            ("index.html", "text/html"),
            ("old.htm", "text/html"),
            ("site.css", "text/css"),
            ("app.js", "text/javascript"),
            ("mod.mjs", "text/javascript"),
            ("report.json", "application/json"),
            ("junit.xml", "application/xml"),
            ("ci.yaml", "application/yaml"),
            ("ci.yml", "application/yaml"),
            ("Cargo.toml", "application/toml"),
            ("setup.ini", "text/plain"),
            ("run.sh", "text/plain"),
            ("main.py", "text/plain"),
            ("lib.rs", "text/plain"),
            ("main.go", "text/plain"),
            ("Main.java", "text/plain"),
            ("x.c", "text/plain"),
            ("x.h", "text/plain"),
            ("shot.png", "image/png"),
            ("photo.jpg", "image/jpeg"),
            ("photo.jpeg", "image/jpeg"),
            ("anim.gif", "image/gif"),
            ("logo.svg", "image/svg+xml"),
            ("pic.webp", "image/webp"),
            ("favicon.ico", "image/x-icon"),
            ("old.bmp", "image/bmp"),
            ("out.zip", "application/zip"),
            ("out.tar", "application/x-tar"),
            ("out.tar.gz", "application/gzip"),
            ("out.tgz", "application/gzip"),
            ("out.tar.bz2", "application/x-bzip2"),
            ("out.tar.xz", "application/x-xz"),
            ("out.tar.zst", "application/zstd"),
            ("out.7z", "application/x-7z-compressed"),
            ("app.jar", "application/java-archive"),
            ("app.war", "application/java-archive"),
            ("pkg-1.0-py3-none-any.whl", "application/zip"),
            ("pkg_1.0_amd64.deb", "application/vnd.debian.binary-package"),
            ("pkg-1.0.x86_64.rpm", "application/x-rpm"),
            ("app-release.apk", "application/vnd.android.package-archive"),
            ("manual.pdf", "application/pdf"),
            ("module.wasm", "application/wasm"),
            ("demo.mp4", "video/mp4"),
            ("font.woff2", "font/woff2"),
        ];
        for (path, want) in cases {
            assert_eq!(content_type_for(path), want, "{path}");
        }
    }

    #[test]
    fn case_insensitive() {
        assert_eq!(content_type_for("SHOT.PNG"), "image/png");
        assert_eq!(content_type_for("Report.Json"), "application/json");
        assert_eq!(content_type_for("A.TAR.GZ"), "application/gzip");
    }

    #[test]
    fn unknown_or_missing_extension() {
        for path in [
            "",
            "Makefile",
            "bin/app",
            ".bashrc",
            "dir/.env",
            "trailing.",
            "dir.d/file",
            "x.unknownext",
            "x.ａｂｃ",
            "x.averyveryverylongextension",
            "core.123",
        ] {
            assert_eq!(content_type_for(path), DEFAULT_CONTENT_TYPE, "{path:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_ignores_case(path in "\\PC{0,20}") {
            let t = content_type_for(&path);
            prop_assert!(t.contains('/'));
            prop_assert_eq!(content_type_for(&path.to_ascii_uppercase()), t);
        }
    }
}
