//! The binary bodies of the transfer protocol, with one owner: the client,
//! the CLI and the server build and read them only through this module.
//!
//! - **Blob batch** (`POST /uploads/{id}/blobs`, client to server): frames
//!   of `sha256: [u8; 32]`, `length: u64` big-endian, `length` bytes.
//! - **File batch** (`POST /files/content`, server to client): frames of
//!   `length: u64` big-endian, `length` bytes, in the order of the ids
//!   asked for.
//! - **Chunk list** (`POST /uploads/{id}/blobs/{sha256}/chunks` and
//!   `…/assemble`, client to server, content type [`CHUNK_LIST_TYPE`]):
//!   records of `size: u32` big-endian, `sha256: [u8; 32]`, one per chunk
//!   in file order; 36 bytes a chunk where the JSON form takes about 90.
//!
//! Nothing stands between frames or after the last. The server reads blob
//! batches as a stream, header by header ([`parse_blob_header`]); the CLI
//! reads a whole file batch from memory ([`FileBatch`]). All are pure, so
//! they are fuzzed (`crates/fuzz`).

/// Length of a blob batch frame header.
pub const BLOB_FRAME_HEADER: usize = 40;

/// Length of a file batch frame header.
pub const FILE_FRAME_HEADER: usize = 8;

/// Why a batch body does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body ends inside a frame header.
    #[error("the batch ends inside a frame header at byte {at}")]
    CutHeader {
        /// Offset of the frame.
        at: usize,
    },
    /// The body ends inside a frame's content.
    #[error("the batch ends inside a frame of {len} bytes at byte {at}")]
    CutContent {
        /// Offset of the frame's content.
        at: usize,
        /// Length its header gives.
        len: u64,
    },
    /// A frame's length is not the one expected for it.
    #[error("a frame has {len} bytes where {expected} were expected")]
    WrongLength {
        /// Length its header gives.
        len: u64,
        /// Length expected.
        expected: u64,
    },
    /// Bytes follow the last expected frame.
    #[error("{extra} bytes follow the last frame")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

/// The content type of a binary chunk list.
pub const CHUNK_LIST_TYPE: &str = "application/vnd.satchel.chunk-list";

/// Length of one chunk list record.
pub const CHUNK_RECORD: usize = 36;

/// One chunk of a chunk list: its size and SHA-256.
pub type ChunkRecord = (u32, [u8; 32]);

/// Appends one chunk list record to `out`.
pub fn push_chunk_record(out: &mut Vec<u8>, size: u32, sha256: &[u8; 32]) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(sha256);
}

/// The records of a binary chunk list: `(size, sha256)` in order, read
/// as they are consumed (a caller builds its own list, with no copy in
/// between); a body that is not whole records is refused first.
pub fn parse_chunk_list(
    body: &[u8],
) -> Result<impl ExactSizeIterator<Item = (u32, [u8; 32])> + '_, FrameError> {
    let records = body.chunks_exact(CHUNK_RECORD);
    if !records.remainder().is_empty() {
        return Err(FrameError::CutHeader {
            at: body.len() - records.remainder().len(),
        });
    }
    Ok(records.map(|r| {
        let size = u32::from_be_bytes(r[..4].try_into().expect("4 bytes"));
        (size, r[4..].try_into().expect("32 bytes"))
    }))
}

/// Appends one blob frame to `out`.
pub fn push_blob_frame(out: &mut Vec<u8>, sha256: &[u8; 32], data: &[u8]) {
    out.extend_from_slice(sha256);
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
}

/// The digest and content length of a blob frame header.
pub fn parse_blob_header(h: &[u8; BLOB_FRAME_HEADER]) -> ([u8; 32], u64) {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&h[..32]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[32..]);
    (digest, u64::from_be_bytes(len))
}

/// One frame of a blob batch: the SHA-256 it names and its content.
pub type BlobFrame<'a> = ([u8; 32], &'a [u8]);

/// Splits a whole blob batch held in memory into its frames.
pub fn split_blob_batch(body: &[u8]) -> Result<Vec<BlobFrame<'_>>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let Some(h) = body.get(at..at + BLOB_FRAME_HEADER) else {
            return Err(FrameError::CutHeader { at });
        };
        let (digest, len) = parse_blob_header(h.try_into().expect("40 bytes"));
        at += BLOB_FRAME_HEADER;
        let data = usize::try_from(len)
            .ok()
            .and_then(|n| body.get(at..at.checked_add(n)?))
            .ok_or(FrameError::CutContent { at, len })?;
        at += data.len();
        out.push((digest, data));
    }
    Ok(out)
}

/// The header of a file batch frame of `len` bytes.
pub fn file_frame_header(len: u64) -> [u8; FILE_FRAME_HEADER] {
    len.to_be_bytes()
}

/// Reads the frames of a whole file batch held in memory, each checked
/// against the size its file must have.
#[derive(Debug)]
pub struct FileBatch<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> FileBatch<'a> {
    /// A reader at the start of `body`.
    pub fn new(body: &'a [u8]) -> FileBatch<'a> {
        FileBatch { body, at: 0 }
    }

    /// The next frame's content, which must be `expected` bytes long.
    pub fn next_frame(&mut self, expected: u64) -> Result<&'a [u8], FrameError> {
        let at = self.at;
        let Some(h) = self.body.get(at..at + FILE_FRAME_HEADER) else {
            return Err(FrameError::CutHeader { at });
        };
        let len = u64::from_be_bytes(h.try_into().expect("8 bytes"));
        if len != expected {
            return Err(FrameError::WrongLength { len, expected });
        }
        let start = at + FILE_FRAME_HEADER;
        let data = usize::try_from(len)
            .ok()
            .and_then(|n| self.body.get(start..start.checked_add(n)?))
            .ok_or(FrameError::CutContent { at: start, len })?;
        self.at = start + data.len();
        Ok(data)
    }

    /// Checks that nothing follows the last frame read.
    pub fn finish(self) -> Result<(), FrameError> {
        match self.body.len() - self.at {
            0 => Ok(()),
            extra => Err(FrameError::Trailing { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_and_refuse_cuts() {
        let mut body = Vec::new();
        push_chunk_record(&mut body, 65_536, &[7; 32]);
        push_chunk_record(&mut body, 1, &[9; 32]);
        assert_eq!(body.len(), 2 * CHUNK_RECORD);
        assert_eq!(&body[..4], &[0, 1, 0, 0], "sizes are big-endian");
        assert_eq!(
            parse_chunk_list(&body).unwrap().collect::<Vec<_>>(),
            vec![(65_536, [7; 32]), (1, [9; 32])]
        );
        assert_eq!(parse_chunk_list(&[]).unwrap().len(), 0);
        assert_eq!(
            parse_chunk_list(&body[..body.len() - 1]).err(),
            Some(FrameError::CutHeader { at: CHUNK_RECORD })
        );
    }

    #[test]
    fn blob_batches_round_trip_and_refuse_cuts() {
        let mut body = Vec::new();
        push_blob_frame(&mut body, &[1; 32], b"hello");
        push_blob_frame(&mut body, &[2; 32], b"");
        let frames = split_blob_batch(&body).unwrap();
        assert_eq!(frames, vec![([1; 32], &b"hello"[..]), ([2; 32], &b""[..])]);
        assert_eq!(
            split_blob_batch(&body[..body.len() - 1]),
            Err(FrameError::CutHeader { at: 45 })
        );
        assert_eq!(
            split_blob_batch(&body[..44]),
            Err(FrameError::CutContent { at: 40, len: 5 })
        );
        let mut huge = vec![0u8; 32];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            split_blob_batch(&huge),
            Err(FrameError::CutContent { .. })
        ));
    }

    #[test]
    fn file_batches_check_every_length() {
        let mut body = Vec::new();
        for data in [&b"abc"[..], b"", b"de"] {
            body.extend_from_slice(&file_frame_header(data.len() as u64));
            body.extend_from_slice(data);
        }
        let mut r = FileBatch::new(&body);
        assert_eq!(r.next_frame(3).unwrap(), b"abc");
        assert_eq!(r.next_frame(0).unwrap(), b"");
        assert_eq!(r.next_frame(2).unwrap(), b"de");
        r.finish().unwrap();
        let mut r = FileBatch::new(&body);
        assert_eq!(
            r.next_frame(4),
            Err(FrameError::WrongLength {
                len: 3,
                expected: 4
            })
        );
        let mut r = FileBatch::new(&body[..10]);
        assert!(matches!(
            r.next_frame(3),
            Err(FrameError::CutContent { .. })
        ));
        let mut r = FileBatch::new(&body);
        r.next_frame(3).unwrap();
        assert_eq!(r.finish(), Err(FrameError::Trailing { extra: 18 }));
    }
}
