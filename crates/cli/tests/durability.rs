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
//! What must hold: when the server reads an upload's `finish` request
//! (every byte of the artifact was acknowledged before), every object in
//! the content store is durable; and the database commit that makes the
//! artifact visible (a write to SQLite's WAL and its sync) happens after
//! that and before the answer is sent.

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
    name: String,
    args: String,
    ret: String,
    start: usize,
    end: usize,
}

fn parse(log: &str) -> Vec<Call> {
    let mut pending: HashMap<&str, (String, String, usize)> = HashMap::new();
    let mut out = Vec::new();
    let mut push = |name: &str, whole: String, start: usize, end: usize| {
        // strace pads short calls so that their results line up.
        let split = whole
            .rsplit_once(" = ")
            .and_then(|(left, ret)| Some((left.trim_end().strip_suffix(')')?, ret)));
        if let Some((args, ret)) = split {
            out.push(Call {
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
                push(name, format!("{head}{tail}"), start, i);
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(pid, (name.to_string(), args.to_string(), i));
            }
        } else if let Some((name, args)) = rest.split_once('(') {
            push(name, args.to_string(), i, i);
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
            let parent = p.parent()?;
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
        if c.ret.starts_with('-') {
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
            "write" | "pwrite64" | "writev" => {
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
        "96",
        "-o",
        log.to_str().unwrap(),
        "-e",
        "trace=openat,mkdir,mkdirat,rename,renameat,renameat2,fsync,fdatasync,syncfs,\
         write,pwrite64,writev,read,recvfrom,sendto",
    ];
    let mut s = Server::start_under(&wrapper, &data, &[]);
    let work = d.path().join("work");
    // A large file (chunks and a recipe) and enough small ones for a pack,
    // then the same file changed in one place (most chunks reused) and
    // one more small one.
    let mut big = noise(3 * 1024 * 1024 + 5, 3);
    write(&work, "big.bin", &big);
    for i in 0..2 * satchel_store::pack::PACK_MIN_BLOBS {
        write(
            &work,
            &format!("small/{i}.txt"),
            format!("small {i}").as_bytes(),
        );
    }
    let agent = s.agent(&work, "durable", 1, "build");
    agent.ok(&["artifact", "upload", "--name", "first", "**/*"]);
    big[2_000_000] ^= 1;
    write(&work, "big.bin", &big);
    write(&work, "small/new.txt", b"one more");
    agent.ok(&["artifact", "upload", "--name", "second", "**/*"]);
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
    // Replay calls in the order they completed.
    let mut order: Vec<&Call> = calls.iter().collect();
    order.sort_by_key(|c| c.end);
    let mut disk = Disk::default();
    let mut finishes = 0;
    for (i, c) in order.iter().enumerate() {
        disk.apply(c);
        let Some((sock, bytes)) = socket_data(c) else {
            continue;
        };
        if !(matches!(c.name.as_str(), "read" | "recvfrom")
            && bytes.starts_with("POST /api/v1/uploads/")
            && bytes.contains("/finish "))
        {
            continue;
        }
        finishes += 1;
        let mut stored: Vec<&String> = disk
            .at
            .keys()
            .filter(|p| p.starts_with(objects) && !p.ends_with("satchel-store"))
            .collect();
        stored.sort();
        assert!(
            ["/c/", "/r/", "/p/"]
                .iter()
                .all(|kind| stored.iter().any(|p| p.contains(kind))),
            "finish {finishes}: the trace shows no chunks, recipes or packs: {stored:?}"
        );
        let lost: Vec<String> = stored.iter().filter_map(|p| disk.lost(p, &data)).collect();
        assert!(
            lost.is_empty(),
            "finish {finishes}: {} of {} objects would not survive a crash:\n{}",
            lost.len(),
            stored.len(),
            lost.join("\n")
        );
        // The commit: a WAL write after the request, synced before the
        // answer goes out on the same connection.
        let answer = order[i + 1..]
            .iter()
            .find(|a| {
                socket_data(a).is_some_and(|(s2, b)| s2 == sock && b.starts_with("HTTP/1.1 "))
            })
            .unwrap_or_else(|| panic!("finish {finishes}: no answer on {sock}"));
        assert!(
            socket_data(answer).unwrap().1.starts_with("HTTP/1.1 200"),
            "finish {finishes}: {}",
            answer.args
        );
        let written = calls.iter().find(|w| {
            w.start > c.end
                && w.end < answer.start
                && w.name == "pwrite64"
                && fd_path(&w.args) == Some(wal)
        });
        let written =
            written.unwrap_or_else(|| panic!("finish {finishes}: no WAL write before the answer"));
        assert!(
            calls.iter().any(|y| {
                matches!(y.name.as_str(), "fsync" | "fdatasync")
                    && fd_path(&y.args) == Some(wal)
                    && y.start > written.end
                    && y.end < answer.start
            }),
            "finish {finishes}: the commit was answered before the WAL was synced"
        );
    }
    assert_eq!(finishes, 2, "two uploads finished in the trace");
}
