//! Cluster keys and the key file.
//!
//! A key file holds one key per line: its id (0-255) and its 32 bytes as 64 lowercase hex
//! digits, separated by a space (`2 9f0c...`). A line of hex alone is key 1 (the one-key files
//! written before rotation existed). Blank lines and surrounding whitespace are ignored;
//! anything else is an error. Several keys are a rotation in progress (see
//! [`super::rotation`]). Keep it readable by the daemon's user only (`gcs-keygen` creates it
//! with mode 0600).

use std::fmt;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;

/// A 256-bit cluster key. Wiped from memory when dropped; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ClusterKey([u8; KEY_LEN]);

impl ClusterKey {
    /// A key from its bytes (from a key file, or from a random source in tests and tools).
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ClusterKey(bytes)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key file text for this key: one line of hex.
    pub fn to_key_file(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * KEY_LEN + 1);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s.push('\n');
        s
    }

    /// Parses key file text.
    pub fn from_key_file(text: &str) -> Result<Self, KeyFileError> {
        let line = text.trim();
        if line.is_empty() {
            return Err(KeyFileError::Empty);
        }
        if line.lines().nth(1).is_some() {
            return Err(KeyFileError::MultipleLines);
        }
        let chars = line.chars().count();
        if chars != 2 * KEY_LEN {
            return Err(KeyFileError::Length { found: chars });
        }
        let mut key = [0u8; KEY_LEN];
        let digits = line.as_bytes();
        for (i, out) in key.iter_mut().enumerate() {
            let hi = hex_value(digits[2 * i]).ok_or(KeyFileError::NotHex { at: 2 * i })?;
            let lo = hex_value(digits[2 * i + 1]).ok_or(KeyFileError::NotHex { at: 2 * i + 1 })?;
            *out = (hi << 4) | lo;
        }
        if key == [0u8; KEY_LEN] {
            return Err(KeyFileError::AllZero);
        }
        Ok(ClusterKey(key))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Every key of a key file, by id (ascending).
pub fn parse_key_file(text: &str) -> Result<Vec<(super::KeyId, ClusterKey)>, KeyFileError> {
    let mut keys: Vec<(super::KeyId, ClusterKey)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, hex) = match line.split_once(char::is_whitespace) {
            Some((id, hex)) => {
                let id: super::KeyId = id
                    .parse()
                    .map_err(|_| KeyFileError::BadId { line: n + 1 })?;
                (id, hex.trim())
            }
            None => (1, line),
        };
        let key = ClusterKey::from_key_file(hex)?;
        if keys.iter().any(|(i, _)| *i == id) {
            return Err(KeyFileError::DuplicateId { id });
        }
        keys.push((id, key));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    keys.sort_by_key(|(i, _)| *i);
    Ok(keys)
}

/// Key file text holding `keys` (one `ID HEX` line each).
pub fn write_key_file(keys: &[(super::KeyId, ClusterKey)]) -> String {
    keys.iter()
        .map(|(id, k)| format!("{id} {}", k.to_key_file()))
        .collect()
}

/// Key file text for a new key made of `random`, which must come from a cryptographic random
/// source (the `gcs-keygen` binary reads the operating system's).
pub fn keygen(random: [u8; KEY_LEN]) -> String {
    ClusterKey::from_bytes(random).to_key_file()
}

/// Why a key file was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyFileError {
    /// Nothing but whitespace.
    #[error("key file is empty")]
    Empty,
    /// More than one non-blank line where one key was expected.
    #[error("key file must hold exactly one line")]
    MultipleLines,
    /// A key id that is not a number in 0-255.
    #[error("key file line {line}: the key id must be a number in 0-255")]
    BadId {
        /// The line (from 1).
        line: usize,
    },
    /// Two keys with one id.
    #[error("key file: key id {id} appears twice")]
    DuplicateId {
        /// The id.
        id: u8,
    },
    /// Not 64 characters.
    #[error("key must be {} hex digits, found {found} characters", 2 * KEY_LEN)]
    Length {
        /// Characters on the line.
        found: usize,
    },
    /// A character that is not a hex digit.
    #[error("key file: not a hex digit at position {at}")]
    NotHex {
        /// Zero-based position on the line.
        at: usize,
    },
    /// All 32 bytes are zero: not a generated key.
    #[error("key is all zeros: generate one with gcs-keygen")]
    AllZero,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors() {
        let good = keygen([7; KEY_LEN]);
        assert_eq!(good.len(), 65);
        assert_eq!(
            ClusterKey::from_key_file(&good).unwrap().as_bytes(),
            &[7; KEY_LEN]
        );
        assert_eq!(
            ClusterKey::from_key_file(&format!("  {}\r\n", good.trim())).unwrap(),
            ClusterKey::from_bytes([7; KEY_LEN])
        );
        assert_eq!(
            ClusterKey::from_key_file(&good.to_uppercase()).unwrap(),
            ClusterKey::from_bytes([7; KEY_LEN])
        );
        assert_eq!(ClusterKey::from_key_file(" \n"), Err(KeyFileError::Empty));
        assert_eq!(
            ClusterKey::from_key_file(&format!("{good}{good}")),
            Err(KeyFileError::MultipleLines)
        );
        assert_eq!(
            ClusterKey::from_key_file("abcd"),
            Err(KeyFileError::Length { found: 4 })
        );
        let mut bad = good.clone();
        bad.replace_range(10..11, "g");
        assert_eq!(
            ClusterKey::from_key_file(&bad),
            Err(KeyFileError::NotHex { at: 10 })
        );
        // Multi-byte characters: 64 chars but not 64 bytes must not slice mid-character.
        let wide = "é".repeat(64);
        assert!(ClusterKey::from_key_file(&wide).is_err());
        assert_eq!(
            ClusterKey::from_key_file(&keygen([0; KEY_LEN])),
            Err(KeyFileError::AllZero)
        );
        assert_eq!(
            format!("{:?}", ClusterKey::from_bytes([1; KEY_LEN])),
            "ClusterKey(<redacted>)"
        );
    }

    proptest! {
        #[test]
        fn key_file_round_trip(bytes in any::<[u8; KEY_LEN]>()) {
            prop_assume!(bytes != [0; KEY_LEN]);
            let text = keygen(bytes);
            let parsed = ClusterKey::from_key_file(&text).unwrap();
            prop_assert_eq!(parsed.as_bytes(), &bytes);
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = ClusterKey::from_key_file(&text);
        }
    }
}
