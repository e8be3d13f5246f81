//! How one stored object is encoded: compression, encryption, naming.
//!
//! Every object (a chunk of file content, or a recipe listing a large blob's
//! chunks) is written as
//!
//! ```text
//! header (24 bytes, authenticated, never encrypted)
//!   magic   "SCH1"
//!   cipher  u8     0 = none, 1 = AES-256-GCM
//!   key id  u32 LE (0 when not encrypted)
//!   nonce   [u8; 12] (zeros when not encrypted)
//!   pad     [u8; 3]
//! body: cipher( inner ) where inner is
//!   kind    u8     0 = chunk, 1 = recipe, 2 = pack index
//!   packing u8     0 = stored as is, 1 = zstd
//!   payload
//!   sha256  [u8; 32] of kind..payload, only in recipes and pack indexes
//!           when not encrypted
//! ```
//!
//! With encryption the GCM tag authenticates the header (as associated data)
//! and the body, so the kind and the compression flag are hidden and a
//! flipped bit anywhere fails to decode. Without encryption a trailing
//! SHA-256 catches flipped bits in recipes; chunks need none, as every read
//! checks a chunk against the digest it is named by.
//!
//! Object names: with encryption, a name is the HMAC-SHA256 of the content
//! digest under a naming key, so storage never shows a plaintext hash; without
//! it, the digest itself.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Digest, StoreError};

const MAGIC: &[u8; 4] = b"SCH1";
/// Bytes in the header.
pub const HEADER: usize = 24;
const TRAILER: usize = 32;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// File content.
    Chunk,
    /// The list of chunks of a large blob.
    Recipe,
    /// The table of contents of a pack of small blobs.
    PackIndex,
}

/// One encryption key.
#[derive(Clone)]
pub struct Key {
    /// Its id, recorded in every object it encrypts.
    pub id: u32,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

/// The keys a store can decrypt with; the highest id encrypts new objects.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: BTreeMap<u32, Key>,
    names: [u8; 32],
}

fn key_err(msg: impl Into<String>) -> StoreError {
    StoreError::Config(msg.into())
}

impl Keyring {
    /// Parses a key file: lines `<id>:<base64 of 32 bytes>` and one optional
    /// `names:<base64 of 32 bytes>` (the naming key; by default derived from
    /// the lowest-id key). `#` starts a comment; commas also separate entries
    /// so the same text fits in one environment variable.
    pub fn parse(text: &str) -> Result<Keyring, StoreError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut keys = BTreeMap::new();
        let mut names = None;
        for (n, entry) in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let (id, value) = entry.split_once(':').ok_or_else(|| {
                key_err(format!(
                    "key entry {}: expected `<id>:<base64 key>` or `names:<base64 key>`",
                    n + 1
                ))
            })?;
            let raw = b64.decode(value.trim()).map_err(|_| {
                key_err(format!("key entry {}: the key is not valid base64", n + 1))
            })?;
            let raw: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
                key_err(format!(
                    "key entry {}: a key must be 32 bytes (AES-256), this one is {}",
                    n + 1,
                    v.len()
                ))
            })?;
            if id.trim() == "names" {
                names = Some(raw);
                continue;
            }
            let id: u32 = id.trim().parse().ok().filter(|i| *i > 0).ok_or_else(|| {
                key_err(format!(
                    "key entry {}: the id must be a positive integer, not {:?}",
                    n + 1,
                    id.trim()
                ))
            })?;
            let cipher = Aes256Gcm::new_from_slice(&raw).expect("32-byte key");
            if keys.insert(id, Key { id, cipher }).is_some() {
                return Err(key_err(format!("key id {id} is listed twice")));
            }
        }
        let Some((_, lowest)) = keys.iter().next() else {
            return Err(key_err(
                "no encryption key found (expected `<id>:<base64 key>` lines)",
            ));
        };
        let names = match names {
            Some(n) => n,
            None => {
                let raw = text_key_for(text, lowest.id)?;
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&raw).expect("any key length");
                mac.update(b"satchel object names v1");
                mac.finalize().into_bytes().into()
            }
        };
        Ok(Keyring { keys, names })
    }

    /// Reads a key file (see [`Keyring::parse`]). It must not be readable by
    /// group or others.
    pub fn load(path: &Path) -> Result<Keyring, StoreError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| key_err(format!("reading key file {}: {e}", path.display())))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(key_err(format!(
                    "key file {} is readable by others (mode {:o}); chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_err(format!("reading key file {}: {e}", path.display())))?;
        Keyring::parse(&text)
    }

    /// A new key file text with one fresh key (id 1) and a naming key.
    pub fn generate() -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut k = [0u8; 32];
        let mut n = [0u8; 32];
        getrandom::fill(&mut k).expect("OS randomness");
        getrandom::fill(&mut n).expect("OS randomness");
        format!(
            "# Satchel encryption keys. Keep this file secret and backed up:\n\
             # without it stored content cannot be read.\n\
             # `<id>:<key>` lines: the highest id encrypts, all decrypt.\n\
             # `names:` keys object names; never change it.\n\
             names:{}\n1:{}\n",
            b64.encode(n),
            b64.encode(k)
        )
    }

    /// A fresh key line with the next id, for rotation.
    pub fn next_key_line(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("OS randomness");
        format!("{}:{}", self.active().id + 1, b64.encode(k))
    }

    /// The key that encrypts new objects.
    pub fn active(&self) -> &Key {
        self.keys
            .values()
            .next_back()
            .expect("keyring is never empty")
    }

    /// The key with this id.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.get(&id)
    }

    /// Key ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

/// Re-reads the raw bytes of key `id` (only used to derive the default
/// naming key, so the parsed cipher need not expose its key).
fn text_key_for(text: &str, id: u32) -> Result<[u8; 32], StoreError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    for entry in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
    {
        if let Some((i, v)) = entry.split_once(':') {
            if i.trim().parse::<u32>().ok() == Some(id) {
                if let Ok(Ok(raw)) = b64.decode(v.trim()).map(<[u8; 32]>::try_from) {
                    return Ok(raw);
                }
            }
        }
    }
    Err(key_err(format!("key {id} not found")))
}

/// Compression setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store as is.
    None,
    /// zstd at this level (negative levels are faster); skipped per object
    /// when it saves less than 1/16 of the size.
    Zstd(i32),
}

/// Encodes and decodes objects.
#[derive(Debug, Clone)]
pub struct Codec {
    /// Compression for new objects.
    pub compression: Compression,
    /// Encryption keys, if encryption is on.
    pub keys: Option<Keyring>,
}

/// What [`Codec::peek`] tells about a stored object without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The encrypting key's id, if encrypted.
    pub key_id: Option<u32>,
}

fn corrupt(msg: &str) -> StoreError {
    StoreError::Undecodable(msg.to_string())
}

impl Codec {
    /// No compression, no encryption.
    pub fn plain() -> Codec {
        Codec {
            compression: Compression::None,
            keys: None,
        }
    }

    /// The storage name of content `digest` (64 hex characters).
    pub fn name(&self, digest: &Digest) -> String {
        match &self.keys {
            None => digest.to_hex(),
            Some(k) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k.names).expect("key");
                mac.update(&digest.0);
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    /// What the store's settings marker records: `plain`, or `encrypted`
    /// with a check value of the naming key (not the key itself), so a
    /// server started without keys, or with another key file, can tell.
    pub fn settings_marker(&self) -> String {
        match &self.keys {
            None => "satchel-store v1 plain".into(),
            Some(k) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k.names).expect("key");
                mac.update(b"satchel naming key check");
                format!(
                    "satchel-store v1 encrypted {}",
                    hex::encode(&mac.finalize().into_bytes()[..8])
                )
            }
        }
    }

    /// Encodes `payload` as an object of `kind`.
    pub fn encode(&self, kind: Kind, payload: &[u8]) -> Vec<u8> {
        self.encode_with(kind, payload, true).0
    }

    /// Encodes `payload` as an object of `kind`, trying compression only if
    /// `try_compress`. Also returns whether the payload was compressed.
    pub fn encode_with(&self, kind: Kind, payload: &[u8], try_compress: bool) -> (Vec<u8>, bool) {
        let compressed = match self.compression {
            Compression::Zstd(level) if try_compress && payload.len() >= 512 => {
                zstd::bulk::compress(payload, level)
                    .ok()
                    .filter(|c| c.len() + payload.len() / 16 < payload.len())
            }
            _ => None,
        };
        let was_compressed = compressed.is_some();
        let body = compressed.as_deref().unwrap_or(payload);
        // One buffer, one copy of the payload: header, then inner (kind,
        // packing, payload), encrypted in place, then the tag or checksum.
        let mut out = Vec::with_capacity(HEADER + 2 + body.len() + TRAILER);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; HEADER - 4]);
        out.push(match kind {
            Kind::Chunk => 0,
            Kind::Recipe => 1,
            Kind::PackIndex => 2,
        });
        out.push(u8::from(was_compressed));
        out.extend_from_slice(body);
        match &self.keys {
            None => {
                if kind != Kind::Chunk {
                    let sum: [u8; 32] = {
                        use sha2::Digest as _;
                        Sha256::digest(&out[HEADER..]).into()
                    };
                    out.extend_from_slice(&sum);
                }
            }
            Some(ring) => {
                let key = ring.active();
                let mut nonce = [0u8; 12];
                getrandom::fill(&mut nonce).expect("OS randomness");
                out[4] = 1;
                out[5..9].copy_from_slice(&key.id.to_le_bytes());
                out[9..21].copy_from_slice(&nonce);
                let (header, inner) = out.split_at_mut(HEADER);
                let tag = key
                    .cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), header, inner)
                    .expect("AES-GCM encryption of an in-memory buffer");
                out.extend_from_slice(&tag);
            }
        }
        (out, was_compressed)
    }

    /// Reads the header of a stored object.
    pub fn peek(stored: &[u8]) -> Result<Header, StoreError> {
        if stored.len() < HEADER || &stored[..4] != MAGIC {
            return Err(corrupt("not a Satchel object (bad magic)"));
        }
        Ok(Header {
            key_id: match stored[4] {
                0 if stored[5..HEADER].iter().any(|b| *b != 0) => {
                    return Err(corrupt("unencrypted object with a damaged header"))
                }
                0 => None,
                1 => Some(u32::from_le_bytes(
                    stored[5..9].try_into().expect("4 bytes"),
                )),
                _ => return Err(corrupt("unknown cipher")),
            },
        })
    }

    /// Decodes a stored object. Any flipped bit is an error.
    pub fn decode(&self, stored: &[u8]) -> Result<(Kind, Vec<u8>), StoreError> {
        let header = Codec::peek(stored)?;
        let inner: Vec<u8> = match header.key_id {
            None if matches!(stored.get(HEADER), Some(1 | 2)) => {
                if stored.len() < HEADER + 2 + TRAILER {
                    return Err(corrupt("object too short"));
                }
                let (inner, sum) = stored[HEADER..].split_at(stored.len() - HEADER - TRAILER);
                let actual: [u8; 32] = {
                    use sha2::Digest as _;
                    Sha256::digest(inner).into()
                };
                if actual[..] != sum[..] {
                    return Err(corrupt("object checksum mismatch"));
                }
                inner.to_vec()
            }
            None => stored[HEADER..].to_vec(),
            Some(id) => {
                let ring = self.keys.as_ref().ok_or_else(|| {
                    StoreError::Config(format!(
                        "stored object is encrypted with key {id} but encryption is not configured"
                    ))
                })?;
                let key = ring.get(id).ok_or_else(|| {
                    StoreError::Config(format!(
                        "stored object is encrypted with key {id}, which is not in the key file (known: {:?})",
                        ring.ids()
                    ))
                })?;
                key.cipher
                    .decrypt(
                        Nonce::from_slice(&stored[9..21]),
                        Payload {
                            msg: &stored[HEADER..],
                            aad: &stored[..HEADER],
                        },
                    )
                    .map_err(|_| corrupt("object failed authentication (tampered or corrupted)"))?
            }
        };
        if inner.len() < 2 {
            return Err(corrupt("object too short"));
        }
        let kind = match inner[0] {
            0 => Kind::Chunk,
            1 => Kind::Recipe,
            2 => Kind::PackIndex,
            _ => return Err(corrupt("unknown object kind")),
        };
        let payload = match inner[1] {
            0 => inner[2..].to_vec(),
            1 => zstd::stream::decode_all(&inner[2..])
                .map_err(|_| corrupt("object does not decompress"))?,
            _ => return Err(corrupt("unknown compression")),
        };
        Ok((kind, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> Keyring {
        Keyring::parse(&Keyring::generate()).unwrap()
    }

    #[test]
    fn keyring_parse_errors_are_clear() {
        for (text, want) in [
            ("", "no encryption key"),
            ("1:abc", "base64"),
            ("1:AAAA", "32 bytes"),
            (
                "x:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "positive integer",
            ),
            ("nonsense", "expected"),
        ] {
            let e = Keyring::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let two = "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(Keyring::parse(two)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn highest_id_encrypts_and_old_keys_still_decrypt() {
        let k1 = Keyring::generate();
        let old = Codec {
            compression: Compression::None,
            keys: Some(Keyring::parse(&k1).unwrap()),
        };
        let obj = old.encode(Kind::Chunk, b"hello");
        assert_eq!(Codec::peek(&obj).unwrap().key_id, Some(1));
        let ring = Keyring::parse(&k1).unwrap();
        let rotated_text = format!("{k1}\n{}", ring.next_key_line());
        let new = Codec {
            compression: Compression::None,
            keys: Some(Keyring::parse(&rotated_text).unwrap()),
        };
        assert_eq!(new.decode(&obj).unwrap().1, b"hello");
        assert_eq!(
            Codec::peek(&new.encode(Kind::Chunk, b"x")).unwrap().key_id,
            Some(2)
        );
        // Names do not change with rotation.
        let d = Digest::of(b"hello");
        assert_eq!(old.name(&d), new.name(&d));
        assert_ne!(old.name(&d), d.to_hex());
    }

    #[test]
    fn encrypted_objects_hide_content_and_compression() {
        let c = Codec {
            compression: Compression::Zstd(3),
            keys: Some(ring()),
        };
        let text = b"MARKER-0123456789 ".repeat(1000);
        let obj = c.encode(Kind::Chunk, &text);
        assert!(obj.len() < text.len() / 4, "compressed before encryption");
        assert!(!obj.windows(6).any(|w| w == b"MARKER"));
        assert_eq!(c.decode(&obj).unwrap(), (Kind::Chunk, text.clone()));
        let other = Codec {
            compression: Compression::None,
            keys: Some(ring()),
        };
        assert!(other.decode(&obj).is_err(), "wrong key must not decode");
    }

    #[test]
    fn incompressible_data_is_stored_as_is() {
        let c = Codec {
            compression: Compression::Zstd(1),
            keys: None,
        };
        let mut data = vec![0u8; 100_000];
        getrandom::fill(&mut data).unwrap();
        let obj = c.encode(Kind::Chunk, &data);
        assert_eq!(obj[HEADER + 1], 0, "not compressed");
        assert_eq!(c.decode(&obj).unwrap().1, data);
    }

    proptest! {
        #[test]
        fn roundtrip_and_every_flipped_bit_fails(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            encrypt in any::<bool>(),
            zstd in any::<bool>(),
            recipe in any::<bool>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let c = Codec {
                compression: if zstd { Compression::Zstd(1) } else { Compression::None },
                keys: encrypt.then(ring),
            };
            let kind = if recipe { Kind::Recipe } else { Kind::Chunk };
            let mut obj = c.encode(kind, &data);
            prop_assert_eq!(c.decode(&obj).unwrap(), (kind, data.clone()));
            let i = flip.index(obj.len() * 8);
            obj[i / 8] ^= 1 << (i % 8);
            // Encrypted: any flip fails. Plain: a flipped chunk may decode to
            // other bytes, which the reader's digest check refuses; it never
            // decodes to the same.
            let got = c.decode(&obj);
            if encrypt || i / 8 < HEADER {
                prop_assert!(got.is_err());
            } else {
                prop_assert!(got.ok() != Some((kind, data.clone())));
            }
        }
    }
}
