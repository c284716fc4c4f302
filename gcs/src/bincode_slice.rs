//! Decoding bincode from a byte slice with a size limit that holds.
//!
//! bincode 1.3 drops the size limit of its options when it decodes from a slice
//! (`Options::deserialize`): a length field claiming more than the bytes present then only
//! fails once the bytes run out, after bincode sized its buffer from the claim. [`decode`]
//! reads through a reader of its own with the limit tightened to the slice's length, so such a
//! claim is refused before anything is allocated for it. (Sequences are bounded by serde,
//! which preallocates at most 1 MiB whatever their count says.) It also says how many bytes
//! were left, which bincode's slice reader does not. Every bincode message of the project
//! decodes this way: gcs control packets, the replica's messages, the client protocol. They
//! share their settings too ([`options`]), what a refusal that ran out of bytes looks like
//! ([`is_truncation`]), and the replica's messages and the client's frames their encoder
//! ([`encode_after`]).

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The bincode settings of every message of the project, fixed here rather than left to
/// bincode's defaults: integers (lengths and enum tags included) fixed-width little-endian, at
/// most `limit` bytes, nothing after the message.
pub fn options(limit: u64) -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(limit)
        .reject_trailing_bytes()
}

/// Encodes `value` with `options` after a header of `head_len` bytes, which `head` writes
/// knowing the length of the encoded value.
///
/// No limit on the way out: the reader refuses what is too large, with a typed error. Without
/// one, encoding cannot fail (memory as the writer, derived impls over sequences of known
/// length), hence the expects.
pub fn encode_after<T: Serialize + ?Sized>(
    value: &T,
    options: impl Options + Copy,
    head_len: usize,
    head: impl FnOnce(&mut BytesMut, usize),
) -> Bytes {
    let options = options.with_no_limit();
    let len = options
        .serialized_size(value)
        .expect("sizing a message without a limit cannot fail") as usize;
    let mut out = BytesMut::with_capacity(head_len + len);
    head(&mut out, len);
    let mut writer = out.writer();
    options
        .serialize_into(&mut writer, value)
        .expect("encoding a message into memory without a limit cannot fail");
    writer.into_inner().freeze()
}

/// Whether bincode refused a [`decode`] because the bytes ran out: the limit is the slice's
/// length, so a field that would go past it is cut short, as is one that reads past the end.
pub fn is_truncation(e: &bincode::ErrorKind) -> bool {
    match e {
        bincode::ErrorKind::SizeLimit => true,
        bincode::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

/// Decodes one `T` from the front of `bytes` with `options` (their limit tightened to
/// `bytes.len()`), and returns it with the number of bytes left after it.
pub fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    options: impl Options,
) -> bincode::Result<(T, usize)> {
    let mut reader = Remaining(bytes);
    let mut de = bincode::Deserializer::with_bincode_read(
        &mut reader,
        options.with_limit(bytes.len() as u64),
    );
    let value = T::deserialize(&mut de)?;
    Ok((value, reader.0.len()))
}

/// The bytes not read yet.
struct Remaining<'a>(&'a [u8]);

impl<'a> Remaining<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
}

impl std::io::Read for Remaining<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.0.len());
        out[..n].copy_from_slice(self.take(n)?);
        Ok(n)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        out.copy_from_slice(self.take(out.len())?);
        Ok(())
    }
}

impl<'a> bincode::BincodeRead<'a> for &mut Remaining<'a> {
    fn forward_read_str<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        let s = std::str::from_utf8(self.take(length)?)
            .map_err(bincode::ErrorKind::InvalidUtf8Encoding)?;
        visitor.visit_borrowed_str(s)
    }

    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        Ok(self.take(length)?.to_vec())
    }

    fn forward_read_bytes<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(self.take(length)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> impl Options + Copy {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_little_endian()
    }

    /// A length claiming far more than the slice holds is refused as over the limit (before
    /// any buffer is sized from it); what fits decodes, with what is left counted.
    #[test]
    fn claims_beyond_the_slice_are_refused_and_leftovers_counted() {
        let mut forged = (1u64 << 40).to_le_bytes().to_vec();
        forged.extend_from_slice(b"abc");
        let e = decode::<Vec<u8>>(&forged, options()).unwrap_err();
        assert!(matches!(*e, bincode::ErrorKind::SizeLimit), "{e:?}");
        let e = decode::<String>(&forged, options()).unwrap_err();
        assert!(matches!(*e, bincode::ErrorKind::SizeLimit), "{e:?}");
        let mut ok = options().serialize(&(7u32, "hi".to_string())).unwrap();
        ok.extend_from_slice(b"xy");
        let ((n, s), left) = decode::<(u32, String)>(&ok, options()).unwrap();
        assert_eq!((n, s.as_str(), left), (7, "hi", 2));
    }
}
