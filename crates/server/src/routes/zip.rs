//! Whole artifacts, or a directory of one, as one streamed zip archive
//! (`GET /artifacts/{id}/archive?format=zip`), for people who double-click
//! a download rather than pipe it into `tar x`.
//!
//! The archive is written as it is sent, never held in memory or on disk
//! (only the central directory, about 100 bytes a member, is built whole): members are stored (no compression, so each file's bytes pass
//! through unchanged and the length is known before the first byte), and
//! each member's CRC-32 is computed while its bytes stream by and written
//! after them in a data descriptor (general-purpose flag bit 3), then again
//! in the central directory at the end. Names are UTF-8 (flag bit 11).
//!
//! Zip64 (APPNOTE 4.5.3) where the 32-bit fields cannot hold a value: a
//! member of 4 GiB or more, a member starting past 4 GiB, more than 65,534
//! members, or a central directory past 4 GiB. Such a member's local header
//! carries a zip64 extra field and its data descriptor 64-bit sizes; the
//! central directory entry has the zip64 extra field with exactly the
//! values its 32-bit fields could not hold.

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt;
use satchel_store::{ContentStore, Digest};

use super::archive::{archive_body, Member};
use crate::error::ApiError;

const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const END64_SIG: u32 = 0x0606_4b50;
const LOCATOR64_SIG: u32 = 0x0706_4b50;
/// Data descriptor follows (bit 3), names are UTF-8 (bit 11).
const FLAGS: u16 = 0x0808;
/// 2.0: plain stored members; 4.5: zip64.
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Made by" Unix (3), so unzip applies the permission bits.
const MADE_BY_UNIX: u16 = 3 << 8;
const MAX32: u64 = 0xFFFF_FFFF;
const MAX16: u64 = 0xFFFF;

/// One member's place in the archive, known before anything is sent.
struct Entry {
    name: Vec<u8>,
    size: u64,
    offset: u64,
    mode: u32,
    dos_time: u16,
    dos_date: u16,
}

impl Entry {
    /// Whether the member needs zip64 fields in its local header and data
    /// descriptor (its size does not fit 32 bits).
    fn zip64_size(&self) -> bool {
        self.size >= MAX32
    }

    fn version(&self) -> u16 {
        if self.zip64_size() || self.offset >= MAX32 {
            VERSION_ZIP64
        } else {
            VERSION_PLAIN
        }
    }

    fn local_header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(30 + self.name.len() + 20);
        put32(&mut h, LOCAL_SIG);
        put16(&mut h, self.version());
        put16(&mut h, FLAGS);
        put16(&mut h, 0); // stored
        put16(&mut h, self.dos_time);
        put16(&mut h, self.dos_date);
        // CRC and sizes follow the data, in the descriptor (bit 3).
        put32(&mut h, 0);
        let (size32, extra) = if self.zip64_size() {
            (MAX32 as u32, 20u16)
        } else {
            (0, 0)
        };
        put32(&mut h, size32);
        put32(&mut h, size32);
        put16(&mut h, self.name.len() as u16);
        put16(&mut h, extra);
        h.extend_from_slice(&self.name);
        if self.zip64_size() {
            // The local zip64 field holds both sizes (APPNOTE 4.5.3);
            // with bit 3 set they are zero here and real in the descriptor.
            put16(&mut h, 0x0001);
            put16(&mut h, 16);
            put64(&mut h, 0);
            put64(&mut h, 0);
        }
        h
    }

    fn local_len(&self) -> u64 {
        30 + self.name.len() as u64 + if self.zip64_size() { 20 } else { 0 }
    }

    fn descriptor(&self, crc: u32) -> Vec<u8> {
        let mut d = Vec::with_capacity(24);
        put32(&mut d, DESCRIPTOR_SIG);
        put32(&mut d, crc);
        if self.zip64_size() {
            put64(&mut d, self.size);
            put64(&mut d, self.size);
        } else {
            put32(&mut d, self.size as u32);
            put32(&mut d, self.size as u32);
        }
        d
    }

    fn descriptor_len(&self) -> u64 {
        if self.zip64_size() {
            24
        } else {
            16
        }
    }

    /// The zip64 extra field of the central directory entry: the size
    /// (twice) and the offset, each only if its 32-bit field overflows.
    fn central_extra(&self) -> Vec<u8> {
        let mut fields = Vec::new();
        if self.zip64_size() {
            put64(&mut fields, self.size);
            put64(&mut fields, self.size);
        }
        if self.offset >= MAX32 {
            put64(&mut fields, self.offset);
        }
        if fields.is_empty() {
            return fields;
        }
        let mut e = Vec::with_capacity(4 + fields.len());
        put16(&mut e, 0x0001);
        put16(&mut e, fields.len() as u16);
        e.extend_from_slice(&fields);
        e
    }

    fn central(&self, crc: u32) -> Vec<u8> {
        let extra = self.central_extra();
        let mut c = Vec::with_capacity(46 + self.name.len() + extra.len());
        put32(&mut c, CENTRAL_SIG);
        put16(&mut c, MADE_BY_UNIX | VERSION_ZIP64);
        put16(&mut c, self.version());
        put16(&mut c, FLAGS);
        put16(&mut c, 0);
        put16(&mut c, self.dos_time);
        put16(&mut c, self.dos_date);
        put32(&mut c, crc);
        let size32 = self.size.min(MAX32) as u32;
        put32(&mut c, size32);
        put32(&mut c, size32);
        put16(&mut c, self.name.len() as u16);
        put16(&mut c, extra.len() as u16);
        put16(&mut c, 0); // comment
        put16(&mut c, 0); // disk
        put16(&mut c, 0); // internal attributes
                          // A regular file with its permission bits only (never setuid,
                          // setgid or sticky), as the tar archive does.
        put32(&mut c, (0o100000 | (self.mode & 0o777)) << 16);
        put32(&mut c, self.offset.min(MAX32) as u32);
        c.extend_from_slice(&self.name);
        c.extend_from_slice(&extra);
        c
    }

    fn central_len(&self) -> u64 {
        46 + self.name.len() as u64 + self.central_extra().len() as u64
    }
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// MS-DOS time and date (UTC) of `secs` since the epoch; times before 1980
/// (the format's first year) are written as 1980-01-01.
fn dos_time_date(secs: u64) -> (u16, u16) {
    const DOS_EPOCH: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    let secs = secs.max(DOS_EPOCH);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = satchel_model::id::civil_from_days(days as i64);
    let y = y.clamp(1980, 2107);
    let time = ((rem / 3600) << 11) | (((rem % 3600) / 60) << 5) | ((rem % 60) / 2);
    let date = (((y - 1980) as u64) << 9) | (u64::from(m) << 5) | u64::from(d);
    (time as u16, date as u16)
}

/// Where every member goes and how long the whole archive is.
struct Layout {
    entries: Vec<(Entry, Digest)>,
    central_offset: u64,
    central_len: u64,
    total: u64,
}

impl Layout {
    fn new(members: Vec<Member>) -> Result<Layout, ApiError> {
        let mut entries = Vec::with_capacity(members.len());
        let mut offset = 0u64;
        for m in members {
            let digest = Digest::from_hex(&m.sha256)?;
            let (dos_time, dos_date) = dos_time_date(m.mtime_secs);
            let e = Entry {
                name: m.path.into_bytes(),
                size: m.size,
                offset,
                mode: m.mode,
                dos_time,
                dos_date,
            };
            offset += e.local_len() + e.size + e.descriptor_len();
            entries.push((e, digest));
        }
        let central_len = entries.iter().map(|(e, _)| e.central_len()).sum();
        let mut layout = Layout {
            entries,
            central_offset: offset,
            central_len,
            total: 0,
        };
        layout.total = offset + central_len + layout.end_len();
        Ok(layout)
    }

    fn zip64_end(&self) -> bool {
        self.entries.len() as u64 >= MAX16
            || self.central_offset >= MAX32
            || self.central_len >= MAX32
            || self
                .entries
                .iter()
                .any(|(e, _)| e.version() == VERSION_ZIP64)
    }

    fn end_len(&self) -> u64 {
        22 + if self.zip64_end() { 56 + 20 } else { 0 }
    }

    /// The zip64 end record and locator (when needed) and the end record.
    fn end(&self) -> Vec<u8> {
        let n = self.entries.len() as u64;
        let mut b = Vec::with_capacity(98);
        if self.zip64_end() {
            let at = self.central_offset + self.central_len;
            put32(&mut b, END64_SIG);
            put64(&mut b, 44); // the record's size after this field
            put16(&mut b, MADE_BY_UNIX | VERSION_ZIP64);
            put16(&mut b, VERSION_ZIP64);
            put32(&mut b, 0);
            put32(&mut b, 0);
            put64(&mut b, n);
            put64(&mut b, n);
            put64(&mut b, self.central_len);
            put64(&mut b, self.central_offset);
            put32(&mut b, LOCATOR64_SIG);
            put32(&mut b, 0);
            put64(&mut b, at);
            put32(&mut b, 1);
        }
        put32(&mut b, END_SIG);
        put16(&mut b, 0);
        put16(&mut b, 0);
        put16(&mut b, n.min(MAX16) as u16);
        put16(&mut b, n.min(MAX16) as u16);
        put32(&mut b, self.central_len.min(MAX32) as u32);
        put32(&mut b, self.central_offset.min(MAX32) as u32);
        put16(&mut b, 0);
        b
    }
}

/// How many pieces of the archive may wait for a slow client.
const QUEUE: usize = 8;

/// Streams `members` as a zip archive named `filename`.zip.
pub(crate) fn zip_response(
    store: std::sync::Arc<dyn ContentStore>,
    members: Vec<Member>,
    filename: &str,
) -> Result<Response, ApiError> {
    let layout = Layout::new(members)?;
    let total = layout.total;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(QUEUE);
    tokio::spawn(async move {
        // A send fails only when the client went away: then stop.
        let mut crcs = Vec::with_capacity(layout.entries.len());
        for (entry, digest) in &layout.entries {
            if tx.send(Ok(entry.local_header().into())).await.is_err() {
                return;
            }
            let mut crc = crc32fast::Hasher::new();
            let mut sent = 0u64;
            match store.get(digest, None).await {
                Ok(mut s) => {
                    while let Some(piece) = s.next().await {
                        let piece = match piece {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                                return;
                            }
                        };
                        if sent + piece.len() as u64 > entry.size {
                            // More than recorded: never send past the
                            // promised length (the client would see a
                            // whole-looking, wrong archive).
                            let _ = tx
                                .send(Err(std::io::Error::other(format!(
                                    "{} is longer in the store than its record",
                                    String::from_utf8_lossy(&entry.name)
                                ))))
                                .await;
                            return;
                        }
                        crc.update(&piece);
                        sent += piece.len() as u64;
                        if tx.send(Ok(piece)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
            if sent != entry.size {
                // The length promised in the headers would be a lie.
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "{} is {sent} bytes in the store, {} in its record",
                        String::from_utf8_lossy(&entry.name),
                        entry.size
                    ))))
                    .await;
                return;
            }
            let crc = crc.finalize();
            crcs.push(crc);
            if tx.send(Ok(entry.descriptor(crc).into())).await.is_err() {
                return;
            }
        }
        let mut tail = Vec::with_capacity(layout.central_len as usize + 98);
        for ((entry, _), crc) in layout.entries.iter().zip(crcs) {
            tail.extend_from_slice(&entry.central(crc));
        }
        tail.extend_from_slice(&layout.end());
        let _ = tx.send(Ok(tail.into())).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    Ok(archive_body(
        Body::from_stream(body),
        "application/zip",
        total,
        filename,
        "zip",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::routes::archive::tests::member;

    #[test]
    fn dos_dates_are_utc_calendar_dates() {
        // 2023-11-14T22:13:20Z
        let (t, d) = dos_time_date(1_700_000_000);
        assert_eq!(d >> 9, 2023 - 1980);
        assert_eq!((d >> 5) & 0xF, 11);
        assert_eq!(d & 0x1F, 14);
        assert_eq!(t >> 11, 22);
        assert_eq!((t >> 5) & 0x3F, 13);
        assert_eq!((t & 0x1F) * 2, 20);
        // Before 1980: the format's first day.
        assert_eq!(dos_time_date(0), (0, (1 << 5) | 1));
        // A leap day.
        let (_, d) = dos_time_date(951_782_400); // 2000-02-29
        assert_eq!(((d >> 5) & 0xF, d & 0x1F), (2, 29));
    }

    #[test]
    fn small_archives_have_no_zip64_records() {
        let mut a = member("a.txt", 3);
        a.mode = 0o4755;
        let l = Layout::new(vec![a, member("dir/b.bin", 10)]).unwrap();
        assert!(!l.zip64_end());
        assert_eq!(l.end().len(), 22);
        let (a, _) = &l.entries[0];
        assert_eq!(a.local_header().len() as u64, a.local_len());
        assert_eq!(a.descriptor(7).len() as u64, a.descriptor_len());
        // Only the permission bits, as a regular file.
        let c = a.central(7);
        let attr = u32::from_le_bytes(c[38..42].try_into().unwrap());
        assert_eq!(attr >> 16, 0o100755);
        let (b, _) = &l.entries[1];
        assert_eq!(b.offset, a.local_len() + 3 + a.descriptor_len());
        assert_eq!(l.total, l.central_offset + l.central_len + 22);
    }

    #[test]
    fn members_of_4_gib_and_offsets_past_it_use_zip64_fields() {
        let big = 5u64 << 30;
        let l = Layout::new(vec![member("big", big), member("after", 1)]).unwrap();
        let (a, _) = &l.entries[0];
        assert!(a.zip64_size());
        let h = a.local_header();
        assert_eq!(h.len() as u64, a.local_len());
        assert_eq!(&h[18..26], &[0xFF; 8]);
        assert_eq!(a.descriptor(1).len(), 24);
        let c = a.central(1);
        assert_eq!(c.len() as u64, a.central_len());
        assert_eq!(&c[20..28], &[0xFF; 8]);
        // The zip64 extra: tag, length 16, then the size twice.
        let extra = &c[46 + 3..];
        assert_eq!(extra[..4], [1, 0, 16, 0]);
        assert_eq!(u64::from_le_bytes(extra[4..12].try_into().unwrap()), big);
        // The second member starts past 4 GiB: only its offset is 64-bit.
        let (b, _) = &l.entries[1];
        assert!(!b.zip64_size());
        assert!(b.offset > MAX32);
        let c = b.central(1);
        assert_eq!(&c[42..46], &[0xFF; 4]);
        let extra = &c[46 + 5..];
        assert_eq!(extra[..4], [1, 0, 8, 0]);
        assert_eq!(
            u64::from_le_bytes(extra[4..12].try_into().unwrap()),
            b.offset
        );
        assert!(l.zip64_end());
        assert_eq!(l.end().len() as u64, l.end_len());
    }

    #[test]
    fn more_than_65534_members_need_the_zip64_end_record() {
        let many: Vec<_> = (0..65_535).map(|i| member(&format!("f{i}"), 0)).collect();
        let l = Layout::new(many).unwrap();
        assert!(l.zip64_end());
        let end = l.end();
        let classic = &end[end.len() - 22..];
        assert_eq!(&classic[8..12], &[0xFF; 4]);
    }
}
