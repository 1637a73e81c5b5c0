//! Snapshots: every state machine's state as of one applied index, with the cluster
//! configuration in effect there, in one checksummed file.
//!
//! A state machine answers [`TakeSnapshot`] with a [`SnapshotView`]: an immutable view of its
//! state and a function that writes it, run off the node's threads while writes go on. It
//! answers [`RestoreSnapshot`] by replacing its state with what the section holds.
//!
//! The file is a stream, written in one pass and read in one pass:
//!
//! ```text
//! "DSTRSNP1"                                        magic, 8 bytes
//! [u32 LE len][postcard(SnapshotMeta)]              index, term, members
//! per section: [u8 1][u32 LE len][namespace][u64 LE items]
//!              ([u32 LE len][bytes])* [u32 0]        the state machine's bytes, in chunks
//! [u8 0]                                            no more sections
//! [u32 LE crc32 of every byte before]
//! ```
//!
//! A reader never trusts a length before the checksum is verified: [`SnapshotInfo::read`]
//! walks the whole file, checking every length against what is left, then the checksum.

use std::io::{self, Read, Write};

use actix::Message;
use serde::{Deserialize, Serialize};

use crate::raft::LogId;
use crate::raft::members::Members;

const MAGIC: &[u8; 8] = b"DSTRSNP1";
/// Bytes a section's writer buffers before a chunk goes out.
const CHUNK: usize = 64 << 10;
/// No chunk or header is larger; a bigger length is damage, never an allocation size.
const MAX_CHUNK: usize = 16 << 20;

/// Why a snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot io: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a whole, intact snapshot.
    #[error("not a valid snapshot: {0}")]
    Corrupt(String),
}

fn corrupt(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt(reason.into())
}

/// What a snapshot covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry applied into it.
    pub last: LogId,
    /// The configuration in effect at `last` (committed: `last` is applied).
    pub members: Members,
}

/// One state machine's part of a snapshot, as found by [`SnapshotInfo::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The state machine's namespace.
    pub namespace: String,
    /// How many items (keys, services, ...) it holds, as the state machine counted them.
    pub items: u64,
    /// Where its first chunk starts in the file.
    pub offset: u64,
    /// Its bytes, chunk framing left out.
    pub bytes: u64,
}

/// A whole, verified snapshot's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// Its sections, in file order.
    pub sections: Vec<SectionInfo>,
    /// The file's size.
    pub size: u64,
    /// The crc32 its last four bytes carry.
    pub crc: u32,
}

/// Writes a view's state into a snapshot section.
pub type WriteView = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// An immutable view of a state machine's state, and how to write it.
pub struct SnapshotView {
    /// How many items it holds, for `snapshot status`.
    pub items: u64,
    /// Writes the state; runs on a thread of its own, so it must not need the actor.
    pub write: WriteView,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView").field("items", &self.items).finish_non_exhaustive()
    }
}

/// `LogStore` → a state machine: hand over a view of your state as of `index`. It arrives
/// right after the `ApplyEntries` that brought the state machine to `index`, and before the
/// next.
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotView, String>")]
pub struct TakeSnapshot {
    /// The applied index the view must be of.
    pub index: u64,
}

/// `LogStore` → a state machine: replace your state with this section's, applied to
/// `index`. Entries after `index` follow as `ApplyEntries`.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RestoreSnapshot {
    /// The index the state is applied to.
    pub index: u64,
    /// The section's bytes, as the state machine's view wrote them.
    pub data: Box<dyn Read + Send>,
}

impl std::fmt::Debug for RestoreSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSnapshot").field("index", &self.index).finish_non_exhaustive()
    }
}

/// A writer that checksums what passes through and counts it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Frames what a section's view writes into chunks.
struct Chunks<'a, W: Write> {
    out: &'a mut W,
    buf: Vec<u8>,
    bytes: u64,
}

impl<W: Write> Chunks<'_, W> {
    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&(self.buf.len() as u32).to_le_bytes())?;
            self.out.write_all(&self.buf)?;
            self.bytes += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for Chunks<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Never a chunk past `CHUNK`, however much one call brings: `write_all` loops.
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes a snapshot of `sections` to `out`; answers what it wrote, as [`SnapshotInfo::read`]
/// would find it. The caller makes it durable.
pub fn write(out: impl Write, meta: &SnapshotMeta, sections: Vec<(String, SnapshotView)>) -> io::Result<SnapshotInfo> {
    let mut out = Crc { inner: io::BufWriter::with_capacity(CHUNK, out), hasher: crc32fast::Hasher::new(), written: 0 };
    out.write_all(MAGIC)?;
    let meta_bytes = postcard::to_allocvec(meta).map_err(io::Error::other)?;
    out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
    out.write_all(&meta_bytes)?;
    let mut infos = Vec::with_capacity(sections.len());
    for (namespace, view) in sections {
        out.write_all(&[1])?;
        out.write_all(&(namespace.len() as u32).to_le_bytes())?;
        out.write_all(namespace.as_bytes())?;
        out.write_all(&view.items.to_le_bytes())?;
        let offset = out.written;
        let mut chunks = Chunks { out: &mut out, buf: Vec::with_capacity(CHUNK), bytes: 0 };
        (view.write)(&mut chunks)?;
        chunks.emit()?;
        let bytes = chunks.bytes;
        out.write_all(&0u32.to_le_bytes())?;
        infos.push(SectionInfo { namespace, items: view.items, offset, bytes });
    }
    out.write_all(&[0])?;
    let crc = out.hasher.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    out.inner.flush()?;
    Ok(SnapshotInfo { meta: meta.clone(), sections: infos, size: out.written + 4, crc })
}

/// A reader that checksums what it reads, and knows how far it is.
struct Walk<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    pos: u64,
    size: u64,
}

impl<R: Read> Walk<R> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>, SnapshotError> {
        if n as u64 > self.size.saturating_sub(self.pos) || n > MAX_CHUNK {
            return Err(corrupt(format!("{what} of {n} bytes at offset {} runs past the end", self.pos)));
        }
        let mut buf = vec![0; n];
        self.inner.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt(format!("truncated in {what} at offset {}", self.pos)),
            _ => SnapshotError::Io(e),
        })?;
        self.hasher.update(&buf);
        self.pos += n as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().expect("4 bytes")))
    }
}

impl SnapshotInfo {
    /// Reads a whole snapshot of `size` bytes, checking its structure and checksum, and
    /// answers what it holds. Nothing in it is used unless all of it is intact.
    pub fn read(input: impl Read, size: u64) -> Result<SnapshotInfo, SnapshotError> {
        let mut w =
            Walk { inner: io::BufReader::with_capacity(CHUNK, input), hasher: crc32fast::Hasher::new(), pos: 0, size };
        if w.bytes(MAGIC.len(), "magic")? != MAGIC {
            return Err(corrupt("it does not start with a dister snapshot's magic bytes"));
        }
        let len = w.u32("meta length")? as usize;
        let meta: SnapshotMeta =
            postcard::from_bytes(&w.bytes(len, "meta")?).map_err(|e| corrupt(format!("meta: {e}")))?;
        let mut sections = Vec::new();
        loop {
            match w.bytes(1, "section marker")?[0] {
                0 => break,
                1 => {}
                other => return Err(corrupt(format!("unknown section marker {other} at offset {}", w.pos - 1))),
            }
            let len = w.u32("namespace length")? as usize;
            let namespace =
                String::from_utf8(w.bytes(len, "namespace")?).map_err(|_| corrupt("a namespace is not UTF-8"))?;
            let items = u64::from_le_bytes(w.bytes(8, "item count")?.try_into().expect("8 bytes"));
            let offset = w.pos;
            let mut bytes = 0;
            loop {
                let len = w.u32("chunk length")? as usize;
                if len == 0 {
                    break;
                }
                w.bytes(len, "chunk")?;
                bytes += len as u64;
            }
            sections.push(SectionInfo { namespace, items, offset, bytes });
        }
        let computed = w.hasher.clone().finalize();
        let crc = w.u32("checksum")?;
        if crc != computed {
            return Err(corrupt(format!("checksum {crc:08x} does not match its contents ({computed:08x})")));
        }
        if w.pos != size {
            return Err(corrupt(format!("{} bytes follow its end", size - w.pos)));
        }
        Ok(SnapshotInfo { meta, sections, size, crc })
    }

    /// The section of `namespace`, if the snapshot has one.
    pub fn section(&self, namespace: &str) -> Option<&SectionInfo> {
        self.sections.iter().find(|s| s.namespace == namespace)
    }
}

/// Reads one section's bytes back out of its chunks; `input` must be positioned at the
/// section's `offset` (the snapshot was verified, so lengths are trusted).
pub struct SectionReader<R> {
    input: R,
    left_in_chunk: usize,
    done: bool,
}

impl<R: Read> SectionReader<R> {
    /// A reader of the section starting where `input` is.
    pub fn new(input: R) -> Self {
        SectionReader { input, left_in_chunk: 0, done: false }
    }
}

impl<R: Read> Read for SectionReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left_in_chunk == 0 {
            let mut len = [0; 4];
            self.input.read_exact(&mut len)?;
            self.left_in_chunk = u32::from_le_bytes(len) as usize;
            if self.left_in_chunk == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left_in_chunk);
        let n = self.input.read(&mut buf[..n])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left_in_chunk -= n;
        Ok(n)
    }
}

/// Writes one length-prefixed frame: how views lay out their items, so that restoring can
/// stream them back one at a time with [`read_frame`].
pub fn write_frame(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    frame_fits(bytes.len())?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// A frame [`read_frame`] would refuse is refused when written: the snapshot fails (the
/// log keeps everything) instead of making a file that cannot be restored.
fn frame_fits(len: usize) -> io::Result<()> {
    if len > MAX_CHUNK {
        let msg = format!("a snapshot record of {len} bytes is over the limit of {MAX_CHUNK}");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    Ok(())
}

/// Reads the next frame [`write_frame`] wrote into `buf`; false at the section's end.
pub fn read_frame(input: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0; 4];
    if input.read(&mut len[..1])? == 0 {
        return Ok(false);
    }
    input.read_exact(&mut len[1..])?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_CHUNK {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a record of {len} bytes")));
    }
    buf.resize(len, 0);
    input.read_exact(buf)?;
    Ok(true)
}

/// Writes `item` (postcard) as one frame.
pub fn write_record(out: &mut dyn Write, item: &impl Serialize) -> io::Result<()> {
    write_record_with(out, item, &mut Vec::new())
}

/// [`write_record`] through a buffer the caller keeps across records (a view writing many
/// of them allocates once).
pub fn write_record_with(out: &mut dyn Write, item: &impl Serialize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    // Room for the length, then the record; the length goes in front once it is known.
    buf.extend_from_slice(&[0; 4]);
    *buf = postcard::to_extend(item, std::mem::take(buf)).map_err(io::Error::other)?;
    frame_fits(buf.len() - 4)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    out.write_all(buf)
}

/// Reads the next item [`write_record`] wrote, or `None` at the section's end.
pub fn read_record<T: for<'de> Deserialize<'de>>(input: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<Option<T>> {
    if !read_frame(input, buf)? {
        return Ok(None);
    }
    postcard::from_bytes(buf).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        let members = Members::of_voters([(1, "127.0.0.1:7001".to_string()), (2, "127.0.0.1:7002".to_string())]);
        SnapshotMeta { last: LogId::new(3, 1234), members }
    }

    /// A view of `n` numbered pairs, written as records.
    fn pairs(n: u64) -> SnapshotView {
        SnapshotView {
            items: n,
            write: Box::new(move |out| (0..n).try_for_each(|i| write_record(out, &(format!("key/{i}"), i)))),
        }
    }

    fn sample() -> Vec<u8> {
        let mut buf = Vec::new();
        // Big enough for several chunks in the first section; the second is empty.
        let sections = vec![("kv".to_string(), pairs(20_000)), ("empty".to_string(), pairs(0))];
        let written = write(&mut buf, &meta(), sections).unwrap();
        assert_eq!(written.size, buf.len() as u64);
        // What the writer answers is what a reader finds.
        assert_eq!(SnapshotInfo::read(&buf[..], buf.len() as u64).unwrap(), written);
        buf
    }

    fn read_pairs(file: &[u8], section: &SectionInfo) -> Vec<(String, u64)> {
        let mut r = SectionReader::new(&file[section.offset as usize..]);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(pair) = read_record::<(String, u64)>(&mut r, &mut buf).unwrap() {
            out.push(pair);
        }
        out
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let file = sample();
        let info = SnapshotInfo::read(&file[..], file.len() as u64).unwrap();
        assert_eq!(info.meta, meta());
        assert_eq!(info.size, file.len() as u64);
        let names: Vec<_> = info.sections.iter().map(|s| (s.namespace.as_str(), s.items)).collect();
        assert_eq!(names, [("kv", 20_000), ("empty", 0)]);
        let kv = read_pairs(&file, info.section("kv").unwrap());
        assert_eq!(kv.len(), 20_000);
        assert_eq!(kv[19_999], ("key/19999".to_string(), 19_999));
        assert!(info.section("kv").unwrap().bytes > CHUNK as u64, "the section spans several chunks");
        assert!(read_pairs(&file, info.section("empty").unwrap()).is_empty());
        assert!(info.section("other").is_none());
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = sample();
        // Every cut in the header and the first chunks, then a spread over the rest.
        let cuts = (0..200).chain((200..file.len()).step_by(997)).chain([file.len() - 1]);
        for cut in cuts {
            match SnapshotInfo::read(&file[..cut], cut as u64) {
                Err(SnapshotError::Corrupt(_)) => {}
                other => panic!("a snapshot cut at {cut} of {} was not refused: {other:?}", file.len()),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let file = sample();
        let spots = (0..300).chain((300..file.len()).step_by(1013)).chain([file.len() - 5, file.len() - 1]);
        for at in spots {
            let mut bad = file.clone();
            bad[at] ^= 0x20;
            match SnapshotInfo::read(&bad[..], bad.len() as u64) {
                Err(SnapshotError::Corrupt(_)) => {}
                other => panic!("a snapshot with byte {at} flipped was not refused: {other:?}"),
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(SnapshotInfo::read(&longer[..], longer.len() as u64), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn a_huge_write_is_still_framed_in_bounded_chunks() {
        let big = SnapshotView { items: 1, write: Box::new(|out| out.write_all(&vec![7u8; 3 * MAX_CHUNK / 2])) };
        let mut file = Vec::new();
        write(&mut file, &meta(), vec![("big".into(), big)]).unwrap();
        let info = SnapshotInfo::read(&file[..], file.len() as u64).unwrap();
        assert_eq!(info.sections[0].bytes, (3 * MAX_CHUNK / 2) as u64);
    }
}
