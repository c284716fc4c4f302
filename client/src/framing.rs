//! One framing for both TCP protocols, the client port ([`crate::proto`]) and the ZEO port:
//! a frame is a 4-byte big-endian length, then that many bytes of body. [`FrameCodec`] is
//! `tokio-util`'s [`LengthDelimitedCodec`] with typed errors ([`FrameError`]) that name the
//! limit a frame broke, and with a choice of when buffer space is reserved.
//!
//! # Limits
//!
//! `LengthDelimitedCodec` reserves the length a peer announces as soon as it has read the
//! head, before the bytes arrive: a peer that announces 25 MiB and sends nothing makes the
//! reader hold 25 MiB. So:
//!
//! - [`FrameCodec::lazy`] never reserves: it hands the buffer to the inner codec only once the
//!   whole frame is there, and otherwise only checks the announced length against its limit.
//!   The buffer grows with what arrives (`FramedRead` doubles it as it fills). For a port
//!   whose peers are not authenticated (ZEO).
//! - [`FrameCodec::client_port`] is the server's side of the client port: at most
//!   [`HELLO_FRAME_MAX`] bytes, not reserved beyond that, until the Hello was accepted; then
//!   the server raises the limit to [`FRAME_MAX`] and the announced length is reserved, so a
//!   large reservation needs an authenticated connection:
//!
//!   ```no_run
//!   # async fn serve(sock: tokio::net::TcpStream) {
//!   use futures_util::StreamExt;
//!   use standby_client::framing::FrameCodec;
//!   let mut frames = tokio_util::codec::FramedRead::new(sock, FrameCodec::client_port());
//!   let hello = frames.next().await;
//!   // ... the token checked:
//!   frames.decoder_mut().hello_accepted(); // or .set_max_frame_length(FRAME_MAX)
//!   # }
//!   ```
//! - [`FrameCodec::reserving`] reserves from the start, up to its limit: the TCP client's
//!   reader of a server's answers.
//!
//! Encoding refuses a body above the limit in force (a typed error, nothing written).

pub use crate::proto::FrameError;
use crate::proto::{ProtoError, FRAME_MAX, HELLO_FRAME_MAX};
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Bytes of a frame's length prefix.
pub const HEAD_LEN: usize = 4;

/// The codec of both TCP protocols: see the [module](self) docs for its limits.
#[derive(Debug)]
pub struct FrameCodec {
    /// Splits and prefixes whole frames; its own limit is kept equal to `max`.
    inner: LengthDelimitedCodec,
    /// The longest body accepted, read or written.
    max: usize,
    /// Still before the client port's Hello: a frame above `max` but within [`FRAME_MAX`]
    /// is refused as [`ProtoError::TooLargeBeforeHello`].
    before_hello: bool,
    /// Whether a frame's announced length is reserved once its head is read.
    reserve: bool,
}

impl FrameCodec {
    fn new(max: usize, before_hello: bool, reserve: bool) -> FrameCodec {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_type::<u32>()
                .big_endian()
                .max_frame_length(max)
                .new_codec(),
            max,
            before_hello,
            reserve,
        }
    }

    /// The server's side of a client-port connection: frames of at most [`HELLO_FRAME_MAX`]
    /// until [`FrameCodec::hello_accepted`], reserved as announced (4 KiB at most).
    pub fn client_port() -> FrameCodec {
        FrameCodec::new(HELLO_FRAME_MAX, true, true)
    }

    /// Frames of at most `max` bytes, each reserved as soon as its length is read.
    pub fn reserving(max: usize) -> FrameCodec {
        FrameCodec::new(max, false, true)
    }

    /// Frames of at most `max` bytes, the buffer growing only with the bytes that arrive.
    pub fn lazy(max: usize) -> FrameCodec {
        FrameCodec::new(max, false, false)
    }

    /// The longest body accepted.
    pub fn max_frame_length(&self) -> usize {
        self.max
    }

    /// Accepts bodies of up to `max` bytes from now on (through a `FramedRead`:
    /// `decoder_mut().set_max_frame_length(max)`). On the client port this ends the
    /// before-Hello limit: frames above `max` are then [`ProtoError::TooLarge`].
    pub fn set_max_frame_length(&mut self, max: usize) {
        self.max = max;
        self.before_hello = false;
        self.inner.set_max_frame_length(max);
    }

    /// The client port's Hello was accepted: frames up to [`FRAME_MAX`], reserved as announced.
    pub fn hello_accepted(&mut self) {
        self.set_max_frame_length(FRAME_MAX);
    }

    /// Refuses a body of `len` bytes if it breaks the limit in force.
    pub fn check_len(&self, len: usize) -> Result<(), ProtoError> {
        if self.before_hello && len > self.max && len <= FRAME_MAX {
            return Err(ProtoError::TooLargeBeforeHello(len));
        }
        if len > self.max {
            let max = if self.before_hello {
                FRAME_MAX
            } else {
                self.max
            };
            return Err(ProtoError::TooLarge { len, max });
        }
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(head) = src.get(..HEAD_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        self.check_len(len)?;
        let whole = HEAD_LEN + len;
        if src.len() < whole {
            if self.reserve {
                src.reserve(whole - src.len());
            }
            return Ok(None);
        }
        // The whole frame is there: the inner codec, always at a frame's head here, splits it
        // off (and reserves nothing, the bytes being in).
        match self.inner.decode(src)? {
            Some(body) => Ok(Some(body)),
            None => Err(FrameError::Io(std::io::Error::other(
                "the length-delimited codec left a whole frame in the buffer",
            ))),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(body) => Ok(Some(body)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection ended inside a frame ({} bytes of it came)",
                    src.len()
                ),
            ))),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    /// Writes the length prefix and `body`.
    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if body.len() > self.max {
            return Err(FrameError::Proto(ProtoError::TooLarge {
                len: body.len(),
                max: self.max,
            }));
        }
        self.inner.encode(body, dst)?;
        Ok(())
    }
}

/// Reads one frame body from `r`, enforcing [`FRAME_MAX`]. `Ok(None)` at a clean end. The
/// buffer grows with the bytes that arrive, not with the length the peer announced. Reads
/// exactly one frame, nothing after it, so it can be mixed with other reads of `r`; it is not
/// cancel-safe (a frame half read is lost): a loop that may give up waiting should keep a
/// `FramedRead` with a [`FrameCodec`] instead.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_with(r, &FrameCodec::lazy(FRAME_MAX)).await
}

/// Reads the first frame of a client-port connection, enforcing [`HELLO_FRAME_MAX`], as
/// [`read_frame`].
pub async fn read_hello_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_with(r, &FrameCodec::client_port()).await
}

/// Reads one frame body within `limits`' limit.
async fn read_frame_with<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameCodec,
) -> Result<Option<Vec<u8>>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; HEAD_LEN];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let n = u32::from_be_bytes(len) as usize;
    limits.check_len(n)?;
    let mut body = Vec::with_capacity(n.min(64 << 10));
    let got = r.take(n as u64).read_to_end(&mut body).await?;
    if got < n {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::FramedRead;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    fn codecs() -> Vec<(&'static str, FrameCodec)> {
        let mut hello = FrameCodec::client_port();
        hello.hello_accepted();
        vec![
            ("lazy", FrameCodec::lazy(FRAME_MAX)),
            ("reserving", FrameCodec::reserving(FRAME_MAX)),
            ("client port after Hello", hello),
        ]
    }

    #[test]
    fn an_announced_gigabyte_is_a_typed_error() {
        let head = BytesMut::from(&(1u32 << 30).to_be_bytes()[..]);
        for (name, mut c) in codecs() {
            let mut b = head.clone();
            match c.decode(&mut b) {
                Err(FrameError::Proto(ProtoError::TooLarge { len, max })) => {
                    assert_eq!((len, max), (1 << 30, FRAME_MAX), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
            assert!(b.capacity() < 1 << 20, "{name}: nothing reserved");
        }
        let mut zeo = FrameCodec::lazy(1 << 20);
        let e = zeo.decode(&mut head.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame of 1073741824 bytes is larger than the maximum 1048576",
            "the message names the limit"
        );
    }

    #[test]
    fn the_client_port_limit_rises_with_the_hello() {
        let announce = |n: usize| BytesMut::from(&(n as u32).to_be_bytes()[..]);
        let mut c = FrameCodec::client_port();
        assert_eq!(c.max_frame_length(), HELLO_FRAME_MAX);
        let mut b = announce(HELLO_FRAME_MAX);
        assert!(matches!(c.decode(&mut b), Ok(None)));
        assert!(matches!(
            c.decode(&mut announce(HELLO_FRAME_MAX + 1)),
            Err(FrameError::Proto(ProtoError::TooLargeBeforeHello(n))) if n == HELLO_FRAME_MAX + 1
        ));
        assert!(matches!(
            c.decode(&mut announce(FRAME_MAX + 1)),
            Err(FrameError::Proto(ProtoError::TooLarge {
                max: FRAME_MAX,
                ..
            }))
        ));
        c.hello_accepted();
        assert_eq!(c.max_frame_length(), FRAME_MAX);
        let mut b = announce(FRAME_MAX);
        assert!(matches!(c.decode(&mut b), Ok(None)));
        assert!(
            b.capacity() >= HEAD_LEN + FRAME_MAX,
            "reserved once authenticated"
        );
        assert!(matches!(
            c.decode(&mut announce(FRAME_MAX + 1)),
            Err(FrameError::Proto(ProtoError::TooLarge {
                max: FRAME_MAX,
                ..
            }))
        ));
    }

    /// A peer announces a large frame it is allowed to send, and sends little of it: the lazy
    /// codec holds what came, no more.
    #[test]
    fn a_frame_that_never_comes_reserves_nothing() {
        let mut c = FrameCodec::lazy(FRAME_MAX);
        let mut b = BytesMut::with_capacity(64);
        b.extend_from_slice(&(16u32 << 20).to_be_bytes());
        b.extend_from_slice(&[7; 20]);
        let cap = b.capacity();
        for _ in 0..3 {
            assert!(matches!(c.decode(&mut b), Ok(None)));
            assert!(matches!(c.decode_eof(&mut b), Err(FrameError::Io(_))));
        }
        assert_eq!(b.capacity(), cap, "lazy: nothing reserved");
        assert_eq!(b.len(), 24, "nothing consumed");
        // The reserving codec takes the announcement at its word.
        let mut r = FrameCodec::reserving(FRAME_MAX);
        assert!(matches!(r.decode(&mut b), Ok(None)));
        assert!(b.capacity() >= HEAD_LEN + (16 << 20));
    }

    /// The same through `FramedRead` on a socket: 16 MiB announced, 100 KiB sent, then
    /// nothing; the read buffer stays near what arrived.
    #[tokio::test]
    async fn a_framed_reader_grows_with_what_arrives() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut frames = FramedRead::new(ours, FrameCodec::lazy(FRAME_MAX));
        peer.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
        peer.write_all(&vec![1; 100 << 10]).await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), frames.next()).await;
        assert!(waited.is_err(), "no frame yet");
        let cap = frames.read_buffer().capacity();
        assert!(frames.read_buffer().len() >= 100 << 10);
        assert!(
            cap <= 512 << 10,
            "buffer of {cap} bytes for 100 KiB arrived"
        );
        drop(peer);
        assert!(matches!(frames.next().await, Some(Err(FrameError::Io(_)))));
    }

    /// Three frames (one empty) cut at every byte boundary, and fed a byte at a time: the same
    /// three bodies, for every codec.
    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let bodies: [&[u8]; 3] = [b"first frame", b"", &[9; 300]];
        let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
        let decode_all = |c: &mut FrameCodec, parts: &[&[u8]]| {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for p in parts {
                buf.extend_from_slice(p);
                while let Some(f) = c.decode(&mut buf).unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert!(c.decode_eof(&mut buf).unwrap().is_none());
            got
        };
        for (name, _) in codecs() {
            for cut in 0..=stream.len() {
                let mut c = codecs().into_iter().find(|(n, _)| *n == name).unwrap().1;
                let got = decode_all(&mut c, &[&stream[..cut], &stream[cut..]]);
                assert_eq!(got, bodies, "{name}, cut at {cut}");
            }
            let mut c = codecs().into_iter().find(|(n, _)| *n == name).unwrap().1;
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(decode_all(&mut c, &bytes), bodies, "{name}, byte by byte");
        }
    }

    #[test]
    fn encoding_prefixes_and_refuses_what_is_too_large() {
        let mut c = FrameCodec::lazy(10);
        let mut out = BytesMut::new();
        c.encode(Bytes::from_static(b"hello"), &mut out).unwrap();
        assert_eq!(&out[..], &frame(b"hello")[..]);
        let e = c.encode(Bytes::from(vec![0; 11]), &mut out).unwrap_err();
        assert!(matches!(
            e,
            FrameError::Proto(ProtoError::TooLarge { len: 11, max: 10 })
        ));
        assert_eq!(out.len(), 9, "nothing written");
    }

    #[tokio::test]
    async fn the_one_frame_readers_keep_their_limits() {
        let (mut peer, mut ours) = tokio::io::duplex(1 << 16);
        peer.write_all(&frame(b"abc")).await.unwrap();
        peer.write_all(&((HELLO_FRAME_MAX + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_hello_frame(&mut ours).await.unwrap(),
            Some(b"abc".to_vec())
        );
        assert!(matches!(
            read_hello_frame(&mut ours).await,
            Err(FrameError::Proto(ProtoError::TooLargeBeforeHello(_)))
        ));
        peer.write_all(&((FRAME_MAX + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut ours).await,
            Err(FrameError::Proto(ProtoError::TooLarge {
                max: FRAME_MAX,
                ..
            }))
        ));
        peer.write_all(&frame(b"xyz")[..5]).await.unwrap();
        drop(peer);
        assert!(matches!(
            read_frame(&mut ours).await,
            Err(FrameError::Io(_))
        ));
        assert!(matches!(read_frame(&mut ours).await, Ok(None)));
    }
}
