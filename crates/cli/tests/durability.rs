//! Durability against an OS crash, not just a killed process: the real
//! server runs under `strace`, and the order of its file system calls is
//! replayed against a model of what survives a power cut.
//!
//! The model: a file's bytes are durable once an `fsync`/`fdatasync` of
//! that file, or a `syncfs`, *started* after its last write *ended*; a
//! name in a directory (a created file, a rename's target, a new
//! directory) is durable once an `fsync` of that directory, or a `syncfs`,
//! started after the name appeared. An object is durable when its bytes,
//! its name and the name of every directory above it that the server
//! created are. Anything less is what a crash may drop, whatever the
//! process believed.
//!
//! What must hold, with the agent sending one request at a time: when the
//! server answers a request that records content (a batch of small files,
//! a whole blob, an assembled large file) or finishes an upload, every
//! object in the content store is durable, and the request's database
//! commit (its last write to SQLite's WAL) was synced before the answer.
//! Chunk uploads alone are exempt: their chunks become durable with the
//! flush before the recipe that uses them.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// One completed system call as `strace -f -y` logged it: positions are
/// line numbers of its start and its end (they differ when other threads'
/// calls were logged in between).
#[derive(Debug)]
struct Call {
    /// The thread, as strace names it.
    pid: String,
    name: String,
    args: String,
    ret: String,
    start: usize,
    end: usize,
}

fn parse(log: &str) -> Vec<Call> {
    let mut pending: HashMap<&str, (String, String, usize)> = HashMap::new();
    let mut out = Vec::new();
    let mut push = |pid: &str, name: &str, whole: String, start: usize, end: usize| {
        // strace pads short calls so that their results line up.
        let split = whole
            .rsplit_once(" = ")
            .and_then(|(left, ret)| Some((left.trim_end().strip_suffix(')')?, ret)));
        if let Some((args, ret)) = split {
            out.push(Call {
                pid: pid.to_string(),
                name: name.to_string(),
                args: args.to_string(),
                ret: ret.trim().to_string(),
                start,
                end,
            });
        }
    };
    for (i, line) in log.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            if let Some((n, head, start)) = pending.remove(pid) {
                assert_eq!(n, name, "strace line {i}: {line}");
                push(pid, name, format!("{head}{tail}"), start, i);
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(pid, (name.to_string(), args.to_string(), i));
            }
        } else if let Some((name, args)) = rest.split_once('(') {
            push(pid, name, args.to_string(), i, i);
        }
    }
    out
}

/// The path strace shows for a file descriptor argument, `9</a/b>`.
fn fd_path(arg: &str) -> Option<&str> {
    let (_, rest) = arg.split_once('<')?;
    Some(rest.split_once('>')?.0)
}

/// The quoted strings of an argument list (paths here hold no quotes).
fn strings(args: &str) -> Vec<&str> {
    args.split('"').skip(1).step_by(2).collect()
}

#[derive(Default)]
struct File {
    last_write: usize,
    syncs: Vec<usize>,
}

/// The file system as the model sees it, replayed call by call.
#[derive(Default)]
struct Disk {
    files: Vec<File>,
    at: HashMap<String, usize>,
    /// When each name created during the trace appeared.
    named: HashMap<String, usize>,
    /// Start positions of fsyncs of each directory, and of syncfs calls.
    dir_syncs: HashMap<String, Vec<usize>>,
    fs_syncs: Vec<usize>,
}

impl Disk {
    fn covered(&self, change: usize, own: Option<&Vec<usize>>) -> bool {
        self.fs_syncs
            .iter()
            .chain(own.into_iter().flatten())
            .any(|&s| s > change)
    }

    /// Why `path` would not survive a crash now, if it would not.
    fn lost(&self, path: &str, top: &Path) -> Option<String> {
        let f = &self.files[self.at[path]];
        if !self.covered(f.last_write, Some(&f.syncs)) {
            return Some(format!(
                "{path}: its bytes (last written at strace line {}) were never synced after \
                 (file syncs began at lines {:?}, syncfs at {:?})",
                f.last_write + 1,
                f.syncs.iter().map(|s| s + 1).collect::<Vec<_>>(),
                self.fs_syncs.iter().map(|s| s + 1).collect::<Vec<_>>()
            ));
        }
        let mut p = Path::new(path);
        while p != top {
            let Some(parent) = p.parent() else {
                return Some(format!("{path} is outside {}", top.display()));
            };
            let name = p.to_str()?;
            if let Some(&when) = self.named.get(name) {
                if !self.covered(when, self.dir_syncs.get(parent.to_str()?)) {
                    return Some(format!(
                        "{path}: the entry {name} was never synced into its directory"
                    ));
                }
            }
            p = parent;
        }
        None
    }

    fn apply(&mut self, c: &Call) {
        // Failed, or of unknown outcome (`= ?`): no effect is assumed,
        // which only ever makes the check stricter for syncs.
        if c.ret.starts_with('-') || c.ret.starts_with('?') {
            return;
        }
        match c.name.as_str() {
            "openat" if c.args.contains("O_CREAT") => {
                if let Some(p) = fd_path(&c.ret) {
                    self.files.push(File {
                        last_write: c.end,
                        syncs: Vec::new(),
                    });
                    self.at.insert(p.to_string(), self.files.len() - 1);
                    self.named.insert(p.to_string(), c.end);
                }
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "ftruncate"
            | "fallocate" => {
                if let Some(&f) = fd_path(&c.args).and_then(|p| self.at.get(p)) {
                    self.files[f].last_write = c.end;
                }
            }
            "rename" | "renameat" | "renameat2" => {
                if let [from, to, ..] = strings(&c.args)[..] {
                    if let Some(f) = self.at.remove(from) {
                        self.at.insert(to.to_string(), f);
                    }
                    self.named.insert(to.to_string(), c.end);
                }
            }
            "mkdir" | "mkdirat" => {
                if let Some(p) = strings(&c.args).first() {
                    self.named.insert(p.to_string(), c.end);
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(p) = fd_path(&c.args) {
                    if let Some(&f) = self.at.get(p) {
                        self.files[f].syncs.push(c.start);
                    }
                    self.dir_syncs
                        .entry(p.to_string())
                        .or_default()
                        .push(c.start);
                }
            }
            "syncfs" => self.fs_syncs.push(c.start),
            _ => {}
        }
    }
}

/// The bytes a socket call carried (its first quoted string), and its
/// socket.
fn socket_data(c: &Call) -> Option<(&str, &str)> {
    let sock = fd_path(&c.args).filter(|p| p.starts_with("socket:"))?;
    Some((sock, strings(&c.args).first().copied().unwrap_or("")))
}

#[test]
fn every_object_is_durable_before_the_upload_that_uses_it_commits() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace is not installed: scripts/test.sh installs it (apt-get install strace)"
    );
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let log = d.path().join("strace.log");
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-y",
        "-s",
        "200",
        "-o",
        log.to_str().unwrap(),
        "-e",
        "trace=openat,mkdir,mkdirat,rename,renameat,renameat2,fsync,fdatasync,syncfs,\
         write,pwrite64,writev,pwritev,pwritev2,ftruncate,fallocate,read,recvfrom,sendto",
    ];
    let mut s = Server::start_under(&wrapper, &data, &[]);
    let work = d.path().join("work");
    // A large file (chunks and a recipe) and enough small ones for a pack,
    // then the same file changed in one place (only the chunks around the
    // change sent, then assembled) and one more small one.
    let mut big = noise(9 * 1024 * 1024 + 5, 3);
    write(&work, "big.bin", &big);
    for i in 0..2 * satchel_store::pack::PACK_MIN_BLOBS {
        write(
            &work,
            &format!("small/{i}.txt"),
            format!("small {i}").as_bytes(),
        );
    }
    let agent = s
        .agent(&work, "durable", 1, "build")
        .env("SATCHEL_CONCURRENCY", "1");
    agent.ok(&["artifact", "upload", "--name", "first", "**/*"]);
    big[5_000_000] ^= 1;
    write(&work, "big.bin", &big);
    write(&work, "small/new.txt", b"one more");
    let second: serde_json::Value = serde_json::from_str(
        &agent.ok(&["artifact", "upload", "--json", "--name", "second", "**/*"]),
    )
    .unwrap();
    let sent = second["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 1024 * 1024,
        "the changed file's other chunks are reused, not sent: {second}"
    );
    // End the server itself (strace would only detach), then strace.
    let killed = Command::new("pkill")
        .args(["-TERM", "-P", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "no server under strace");
    assert!(s.child.wait().unwrap().success());

    let text = std::fs::read_to_string(&log).unwrap();
    if let Ok(keep) = std::env::var("SATCHEL_KEEP_STRACE") {
        std::fs::write(keep, &text).unwrap();
    }
    let calls = parse(&text);
    let objects = data.join("content/objects");
    let objects = objects.to_str().unwrap();
    let wal = data.join("satchel.db-wal");
    let wal = wal.to_str().unwrap();

    // Checkpoints: the answer to every request that records content
    // (a batch, a whole blob, an assembled large file) or finishes an
    // upload. The agent sends one request at a time, so at each answer
    // everything stored so far must be durable, and the commit synced.
    let mut checkpoints: Vec<(usize, String)> = Vec::new();
    for c in &calls {
        let Some((sock, bytes)) = socket_data(c) else {
            continue;
        };
        if !matches!(c.name.as_str(), "read" | "recvfrom") {
            continue;
        }
        let line = bytes.split(" HTTP/1.1").next().unwrap_or_default();
        let parts: Vec<&str> = line.split(['/', ' ']).collect();
        let records = matches!(
            parts[..],
            ["POST", "", "api", "v1", "uploads", _, "blobs"]
                | ["PUT", "", "api", "v1", "uploads", _, "blobs", _]
                | [
                    "POST",
                    "",
                    "api",
                    "v1",
                    "uploads",
                    _,
                    "blobs",
                    _,
                    "assemble"
                ]
                | ["POST", "", "api", "v1", "uploads", _, "finish"]
        );
        if !records {
            continue;
        }
        let answer = calls
            .iter()
            .filter(|a| a.start > c.end)
            .find(|a| {
                socket_data(a).is_some_and(|(s2, b)| s2 == sock && b.starts_with("HTTP/1.1 "))
            })
            .unwrap_or_else(|| panic!("{line}: no answer on {sock}"));
        let status = socket_data(answer).unwrap().1;
        assert!(status.starts_with("HTTP/1.1 20"), "{line}: {status}");
        // Its database commit: a WAL write before the answer, synced by
        // the thread that wrote it (SQLite commits on the calling thread)
        // before the answer went out. Other WAL writes in between (the
        // audit log's background batch, on any pooled thread, even this
        // one) may sync later. A commit that is never synced before its
        // answer still fails unless an audit batch completed in the same
        // window.
        let writes: Vec<&Call> = calls
            .iter()
            .filter(|w| {
                w.start > c.end
                    && w.end < answer.start
                    && w.name == "pwrite64"
                    && fd_path(&w.args) == Some(wal)
            })
            .collect();
        let synced = |w: &Call| {
            calls.iter().any(|y| {
                matches!(y.name.as_str(), "fsync" | "fdatasync")
                    && y.pid == w.pid
                    && fd_path(&y.args) == Some(wal)
                    && y.start > w.end
                    && y.end < answer.start
            })
        };
        if writes.is_empty() {
            assert!(
                !line.ends_with("/finish"),
                "{line}: no commit before the answer"
            );
        } else {
            assert!(
                writes.iter().any(|w| synced(w)),
                "{line}: answered before its commit was synced"
            );
        }
        checkpoints.push((answer.start, line.to_string()));
    }
    checkpoints.sort();
    assert!(
        checkpoints.iter().any(|(_, l)| l.ends_with("/assemble")),
        "no large file was assembled from chunks: {checkpoints:?}"
    );
    let finishes = checkpoints
        .iter()
        .filter(|(_, l)| l.ends_with("/finish"))
        .count();
    assert_eq!(
        finishes, 2,
        "two uploads finished in the trace: {checkpoints:?}"
    );
    // Each kind of recording request was seen (a request line split
    // across reads would be missed, and show here).
    for kind in ["/blobs", "/assemble", "/finish"] {
        assert!(
            checkpoints.iter().any(|(_, l)| l.ends_with(kind)),
            "no {kind} request among the checkpoints: {checkpoints:?}"
        );
    }
    assert!(
        checkpoints.iter().any(|(_, l)| l.starts_with("PUT ")),
        "no whole-blob PUT among the checkpoints: {checkpoints:?}"
    );

    // Replay the calls in the order they completed, checking each
    // checkpoint once every call that ended before it is applied.
    let mut order: Vec<&Call> = calls.iter().collect();
    order.sort_by_key(|c| c.end);
    let mut disk = Disk::default();
    let mut next = order.iter().peekable();
    let mut seen = std::collections::HashSet::new();
    for (at, line) in &checkpoints {
        while let Some(c) = next.next_if(|c| c.end < *at) {
            disk.apply(c);
        }
        let stored: Vec<&String> = disk.at.keys().filter(|p| p.starts_with(objects)).collect();
        seen.extend(
            stored
                .iter()
                .map(|p| p.rsplit('/').nth(2).unwrap_or("").to_string()),
        );
        let mut lost: Vec<String> = stored.iter().filter_map(|p| disk.lost(p, &data)).collect();
        lost.sort();
        assert!(
            lost.is_empty(),
            "answering {line}: {} of {} objects would not survive a crash:\n{}",
            lost.len(),
            stored.len(),
            lost.join("\n")
        );
    }
    // (Chunks of large files go into packs: no `c/` objects are written.)
    for kind in ["b", "r", "p"] {
        assert!(
            seen.contains(kind),
            "the trace shows no {kind}/ objects: {seen:?}"
        );
    }
}
