//! The file-backed log: segment files, recovery at open, and the writer thread that appends
//! and fsyncs with group commit.
//!
//! Layout: segments live directly in the log directory, named by a zero-padded sequence
//! number (`00000000000000000001.seg`, ...); other files are ignored. Records are only ever
//! appended; a new segment is started before a batch once the current one has reached
//! `segment_bytes` (a batch may overflow it). A segment has no header, it is a run of records:
//!
//! ```text
//! [u32 LE payload length][u32 LE crc32 of payload][payload = postcard(Record)]
//! ```
//!
//! A segment the writer starts opens with a start record naming the log's last entry at that
//! point, and is started only before a batch that appends after it (never one that cuts a
//! suffix), so the segment's records need nothing before it. Compaction
//! ([`WriteBatch::compact_to`]) deletes the oldest segments once every entry they hold is at
//! or below the compaction point and the segment after them opens with a start record; that
//! record then gives the log its base. The current segment is never deleted, and the batch
//! that asks for compaction carries the hard state into it first.
//!
//! Recovery reads every segment in order and replays each record with [`super::replay`]. A bad
//! record at the end of the last segment is a torn write and is cut: fewer than 8 bytes left, a
//! length running past the end of the file, or a checksum or decode failure of a record that
//! ends the file or is followed by nothing but zero bytes (a file extended but not yet written
//! when the machine stopped). Any other bad record, or any bad record in an earlier segment, is
//! [`StorageError::Corrupt`]: good records after it were acknowledged, so cutting could lose
//! committed data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{LogBackend, LogWrite, Recovered, WriteBatch, replay};
use crate::error::StorageError;
use crate::raft::{Entry, HardState, LogId};

const HEADER: usize = 8;
/// No record is larger; a bigger length field is damage, never an allocation size.
const MAX_RECORD: usize = 256 << 20;
const SUFFIX: &str = ".seg";
/// A buffer that grew past this for one huge group is released rather than kept for good.
const KEEP_BUF: usize = 16 << 20;

type Done = oneshot::Sender<Result<(), StorageError>>;

/// A record as read back from disk.
#[derive(Deserialize)]
enum Record {
    Entry(Entry),
    HardState(HardState),
    Reset(LogId),
    /// Opens a segment: the log's last entry when it was started.
    Start(LogId),
}

/// The same record by reference, to encode without cloning entries; the variants must stay in
/// the order of [`Record`] because postcard encodes the variant index.
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry),
    HardState(&'a HardState),
    Reset(LogId),
    Start(LogId),
}

/// What the writer knows of one segment, for compaction.
#[derive(Clone, Copy, Debug)]
struct Segment {
    seq: u64,
    /// Highest index any of its records names.
    max_index: u64,
    /// It opens with a start record: the log can begin there.
    starts: bool,
}

/// Replays one record read back from disk.
fn replay_record(state: &mut Recovered, record: Record) -> Result<(), String> {
    let write = match record {
        Record::Entry(e) => LogWrite::Entry(Arc::new(e)),
        Record::HardState(hs) => LogWrite::HardState(hs),
        Record::Reset(base) => LogWrite::Reset(base),
        Record::Start(prev) => {
            if state.entries.is_empty() && state.base == LogId::default() {
                // The first segment left after compaction: the log begins after `prev`.
                state.base = prev;
            } else if state.last() != prev {
                let last = state.last();
                return Err(format!(
                    "segment starts after entry {}/{} but the log before it ends at {}/{}",
                    prev.index, prev.term, last.index, last.term
                ));
            }
            return Ok(());
        }
    };
    replay(state, write)
}

/// The file-backed log. Appends and fsyncs happen on a dedicated writer thread; dropping the
/// log lets that thread finish every queued batch and waits for it.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    tx: Option<mpsc::Sender<(WriteBatch, Done)>>,
    thread: Option<JoinHandle<()>>,
}

impl FileLog {
    /// Opens (creating if missing) the log under `dir`, recovers it, and starts the writer
    /// thread. New segments are started once the current one holds `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(FileLog, Recovered), StorageError> {
        FileLog::open_observed(dir, segment_bytes, None)
    }

    /// [`FileLog::open`], the writer recording each fsync's duration in `fsync`.
    pub fn open_observed(
        dir: &Path,
        segment_bytes: u64,
        fsync: Option<Histogram>,
    ) -> Result<(FileLog, Recovered), StorageError> {
        fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
        let seqs = list_segments(dir)?;
        let mut recovered = Recovered::default();
        let mut segments = Vec::with_capacity(seqs.len());
        let mut tail = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            let last = i + 1 == seqs.len();
            let (end, segment) = scan(&path, seq, &data, last, &mut recovered)?;
            segments.push(segment);
            if end < data.len() {
                cut_tail(&path, end as u64)?;
            }
            if last {
                tail = Some((seq, end as u64));
            }
        }
        let last = recovered.last();
        let writer = match tail {
            Some((seq, len)) => {
                let path = segment_path(dir, seq);
                let file = OpenOptions::new().append(true).open(&path);
                let file = file.map_err(io_err("open", &path))?;
                Writer::new(dir, segment_bytes, file, len, segments, last)
            }
            None => Writer::create(dir, segment_bytes, 1, Vec::new(), last)?,
        };
        let (segments, entries) = (seqs.len(), recovered.entries.len());
        tracing::debug!(dir = %dir.display(), segments, entries, "log recovered");
        Ok((FileLog::start(writer, fsync)?, recovered))
    }

    fn start(writer: Writer, fsync: Option<Histogram>) -> Result<FileLog, StorageError> {
        let dir = writer.dir.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("dister-log-writer".into())
            .spawn(move || writer.run(rx, fsync.as_ref()))
            .map_err(io_err("spawn writer thread", &dir))?;
        Ok(FileLog { dir, tx: Some(tx), thread: Some(thread) })
    }
}

impl LogBackend for FileLog {
    fn submit(&mut self, batch: WriteBatch) -> oneshot::Receiver<Result<(), StorageError>> {
        let (done, rx) = oneshot::channel();
        let Some(tx) = &self.tx else {
            let _ = done.send(Err(StorageError::Closed));
            return rx;
        };
        if let Err(mpsc::SendError((_, done))) = tx.send((batch, done)) {
            let _ = done.send(Err(StorageError::Closed));
        }
        rx
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit; joining means a
        // node reopened in this process never appends to the same files as the old writer.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "log writer thread panicked");
        }
    }
}

/// The writer thread's state: the segment being appended to, and what it knows of all.
struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    path: PathBuf,
    file: File,
    /// Bytes already in the current segment.
    len: u64,
    /// Bytes of the current segment's start record (0 for a segment reopened at start).
    opening: u64,
    /// Every segment on disk, oldest first; the last is the current one.
    segments: Vec<Segment>,
    /// The log's last entry after every record written so far.
    last: LogId,
    buf: Vec<u8>,
}

impl Writer {
    /// A writer appending to `file`, the last of `segments`.
    fn new(dir: &Path, segment_bytes: u64, file: File, len: u64, segments: Vec<Segment>, last: LogId) -> Writer {
        let seq = segments.last().map_or(1, |s| s.seq);
        let path = segment_path(dir, seq);
        let (dir, buf) = (dir.into(), Vec::new());
        Writer { dir, segment_bytes, path, file, len, opening: 0, segments, last, buf }
    }

    /// Creates segment `seq` after `segments` and makes its directory entry durable; its
    /// first record (written with the next flush) is the start record.
    fn create(
        dir: &Path,
        segment_bytes: u64,
        seq: u64,
        mut segments: Vec<Segment>,
        last: LogId,
    ) -> Result<Writer, StorageError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(io_err("create", &path))?;
        sync_dir(dir)?;
        segments.push(Segment { seq, max_index: last.index, starts: true });
        let mut writer = Writer::new(dir, segment_bytes, file, 0, segments, last);
        writer.encode(&RecordRef::Start(last))?;
        writer.opening = writer.buf.len() as u64;
        Ok(writer)
    }

    fn seq(&self) -> u64 {
        self.segments.last().map_or(1, |s| s.seq)
    }

    /// Appends one record to the buffer, and follows what it does to the log.
    fn encode(&mut self, record: &RecordRef<'_>) -> Result<(), StorageError> {
        encode(record, &mut self.buf).map_err(|reason| StorageError::Io {
            op: "encode",
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, reason),
        })?;
        match record {
            RecordRef::Entry(e) => self.last = e.log_id(),
            RecordRef::Reset(base) => self.last = *base,
            RecordRef::HardState(_) | RecordRef::Start(_) => return Ok(()),
        }
        if let Some(current) = self.segments.last_mut() {
            current.max_index = current.max_index.max(self.last.index);
        }
        Ok(())
    }

    /// A segment may start before `batch` only if the batch appends after the last entry:
    /// one that cuts a suffix needs the segment before it.
    fn may_start_before(&self, batch: &WriteBatch) -> bool {
        batch.writes.iter().find_map(|w| match w {
            LogWrite::Entry(e) => Some(e.index == self.last.index + 1),
            LogWrite::Reset(_) => Some(true),
            LogWrite::HardState(_) => None,
        }) != Some(false)
    }

    /// Deletes the oldest segments whose entries are all at or below `to`, as long as the
    /// segment after them opens with a start record (the current one always stays).
    fn compact(&mut self, to: u64) -> Result<(), StorageError> {
        let mut keep_from = 0;
        for (i, s) in self.segments.iter().enumerate().skip(1) {
            if self.segments[i - 1].max_index > to {
                break;
            }
            if s.starts {
                keep_from = i;
            }
        }
        if keep_from == 0 {
            return Ok(());
        }
        for s in self.segments.drain(..keep_from) {
            let path = segment_path(&self.dir, s.seq);
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        sync_dir(&self.dir)?;
        let (segments, first) = (keep_from, self.segments[0].seq);
        tracing::debug!(dir = %self.dir.display(), to, segments, first, "log segments compacted away");
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<(WriteBatch, Done)>, fsync: Option<&Histogram>) {
        let mut failed = false;
        let mut group = Vec::new();
        // Ends once every `FileLog` sender is gone and the queue is drained.
        while let Ok(first) = rx.recv() {
            group.push(first);
            group.extend(rx.try_iter());
            let mut error = None;
            if !failed && let Err(e) = self.commit(&group, fsync) {
                let path = self.path.display();
                tracing::error!(path = %path, error = %e, "log write failed; storage is closed");
                (error, failed) = (Some(e), true);
            }
            // The first batch of a failed group gets the cause, every later one `Closed`.
            for (_, done) in group.drain(..) {
                let result = match error.take() {
                    Some(e) => Err(e),
                    None if failed => Err(StorageError::Closed),
                    None => Ok(()),
                };
                let _ = done.send(result);
            }
        }
    }

    /// Writes a group of batches with one write and one fdatasync (more only where a segment
    /// rolls over in the middle of the group).
    fn commit(&mut self, group: &[(WriteBatch, Done)], fsync: Option<&Histogram>) -> Result<(), StorageError> {
        if self.buf.capacity() > KEEP_BUF {
            self.buf = Vec::new();
        }
        for (batch, _) in group.iter().filter(|(b, _)| !b.is_empty()) {
            let at = self.len + self.buf.len() as u64;
            if at > self.opening && at >= self.segment_bytes && self.may_start_before(batch) {
                self.flush(fsync)?;
                let (next, segments) = (self.seq() + 1, std::mem::take(&mut self.segments));
                *self = Writer::create(&self.dir, self.segment_bytes, next, segments, self.last)?;
            }
            for write in &batch.writes {
                let record = match write {
                    LogWrite::Entry(e) => RecordRef::Entry(e),
                    LogWrite::HardState(hs) => RecordRef::HardState(hs),
                    LogWrite::Reset(base) => RecordRef::Reset(*base),
                };
                self.encode(&record)?;
            }
        }
        self.flush(fsync)?;
        // Only once the batch asking for it (with the hard state) is durable.
        match group.iter().filter_map(|(b, _)| b.compact_to).map(|id| id.index).max() {
            Some(to) => self.compact(to),
            None => Ok(()),
        }
    }

    fn flush(&mut self, fsync: Option<&Histogram>) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf).map_err(io_err("write", &self.path))?;
        let started = std::time::Instant::now();
        self.file.sync_data().map_err(io_err("fdatasync", &self.path))?;
        if let Some(h) = fsync {
            h.observe(started.elapsed().as_secs_f64());
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

fn encode(record: &RecordRef<'_>, buf: &mut Vec<u8>) -> Result<(), String> {
    let payload = postcard::to_allocvec(record).map_err(|e| e.to_string())?;
    if payload.len() > MAX_RECORD {
        return Err(format!("record of {} bytes is over the limit of {MAX_RECORD}", payload.len()));
    }
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// Why a record could not be read.
struct Bad {
    reason: String,
    /// The damage runs to the end of the file, or only zero bytes follow it: what a torn or
    /// half-allocated append leaves behind.
    torn: bool,
}

/// Reads the record at the start of `rest`; returns it and its size on disk.
fn read_record(rest: &[u8]) -> Result<(Record, usize), Bad> {
    let bad = |reason: String, torn| Err(Bad { reason, torn });
    if rest.len() < HEADER {
        return bad(format!("{} bytes left, short of a record header", rest.len()), true);
    }
    let (head, body) = rest.split_at(HEADER);
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_RECORD {
        let reason = format!("length {len} is over the limit of {MAX_RECORD}");
        return bad(reason, len > body.len() || body.iter().all(|&b| b == 0));
    }
    if len > body.len() {
        let reason = format!("length {len} runs past the end ({} bytes left)", body.len());
        return bad(reason, true);
    }
    let (payload, after) = body.split_at(len);
    let torn = after.iter().all(|&b| b == 0);
    if crc32fast::hash(payload) != crc {
        return bad("checksum mismatch".into(), torn);
    }
    // The checksum passed, so these bytes are what was written: a record that does not decode
    // is a format mismatch, not a torn write, and must not be cut silently. The one exception
    // is an all-zero header (length 0 has checksum 0): zero fill after a crash, never a record.
    let zero_fill = len == 0 && torn;
    match postcard::take_from_bytes::<Record>(payload) {
        Ok((record, [])) => Ok((record, HEADER + len)),
        Ok((_, extra)) => bad(format!("{} bytes left after the record", extra.len()), zero_fill),
        Err(e) => bad(format!("undecodable record: {e}"), zero_fill),
    }
}

/// Replays segment `seq`; returns where its good records end, and what compaction needs to
/// know of it. Only the last segment may end before its data does (a torn tail, which the
/// caller cuts).
fn scan(
    path: &Path,
    seq: u64,
    data: &[u8],
    last: bool,
    state: &mut Recovered,
) -> Result<(usize, Segment), StorageError> {
    let corrupt = |offset: usize, reason| StorageError::Corrupt { path: path.into(), offset: offset as u64, reason };
    let mut segment = Segment { seq, max_index: 0, starts: false };
    let mut off = 0;
    while off < data.len() {
        match read_record(&data[off..]) {
            Ok((record, size)) => {
                segment.starts |= off == 0 && matches!(record, Record::Start(_));
                replay_record(state, record).map_err(|reason| corrupt(off, reason))?;
                segment.max_index = segment.max_index.max(state.last().index);
                off += size;
            }
            Err(Bad { reason, torn: true }) if last => {
                let (path, dropped) = (path.display(), data.len() - off);
                tracing::warn!(path = %path, offset = off, dropped, reason, "cutting a torn write off the log tail");
                return Ok((off, segment));
            }
            Err(Bad { reason, .. }) => return Err(corrupt(off, reason)),
        }
    }
    Ok((off, segment))
}

fn cut_tail(path: &Path, end: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_err("open", path))?;
    file.set_len(end).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SUFFIX}"))
}

/// Sequence numbers of the segments in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut seqs = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let name = item.map_err(io_err("list", dir))?.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()));
        if let Some(seq) = seq.and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync dir", dir))
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    move |source| StorageError::Io { op, path: path.into(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Payload;
    use futures::executor::block_on;

    const SEG: u64 = 1 << 20;

    fn e(term: u64, index: u64) -> LogWrite {
        let data = format!("value {index}").into_bytes().into();
        let payload = Payload::Command { namespace: "kv".into(), data };
        LogWrite::Entry(Arc::new(Entry { term, index, payload }))
    }

    fn batch(writes: Vec<LogWrite>) -> WriteBatch {
        WriteBatch::of(writes)
    }

    fn write(log: &mut FileLog, writes: Vec<LogWrite>) {
        let rx = log.submit(batch(writes));
        block_on(rx).expect("answered").expect("durable");
    }

    fn open(dir: &Path, segment_bytes: u64) -> (FileLog, Recovered) {
        FileLog::open(dir, segment_bytes).expect("open")
    }

    fn ids(r: &Recovered) -> Vec<(u64, u64)> {
        r.entries.iter().map(|e| (e.term, e.index)).collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let seqs = list_segments(dir).expect("list");
        seqs.into_iter().map(|s| segment_path(dir, s)).collect()
    }

    /// Byte offsets of the records in a segment file.
    fn offsets(path: &Path) -> Vec<usize> {
        let data = fs::read(path).expect("read");
        let (mut off, mut out) = (0, Vec::new());
        while off < data.len() {
            out.push(off);
            let len: [u8; 4] = data[off..off + 4].try_into().expect("4 bytes");
            off += HEADER + u32::from_le_bytes(len) as usize;
        }
        out
    }

    fn corrupt_at(dir: &Path, segment_bytes: u64) -> (PathBuf, u64) {
        match FileLog::open(dir, segment_bytes) {
            Err(StorageError::Corrupt { path, offset, .. }) => (path, offset),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hs = HardState { term: 3, voted_for: Some(2), commit: 2 };
        let (mut log, r) = open(dir.path(), SEG);
        assert_eq!(r, Recovered::default());
        write(&mut log, vec![e(1, 1), e(1, 2), LogWrite::HardState(HardState::default())]);
        write(&mut log, vec![e(3, 3), LogWrite::HardState(hs)]);
        drop(log);
        let (_log, r) = open(dir.path(), SEG);
        assert_eq!(r.hard_state, hs);
        assert_eq!(ids(&r), vec![(1, 1), (1, 2), (3, 3)]);
        assert!(matches!(e(3, 3), LogWrite::Entry(want) if r.entries[2] == want));
    }

    #[test]
    fn appending_at_an_earlier_index_cuts_the_suffix_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        write(&mut log, vec![e(1, 1), e(1, 2), e(1, 3)]);
        write(&mut log, vec![e(2, 2)]);
        drop(log);
        assert_eq!(ids(&open(dir.path(), SEG).1), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_reset_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        write(&mut log, vec![LogWrite::Reset(LogId::new(4, 500)), e(4, 501), e(5, 502)]);
        drop(log);
        let r = open(dir.path(), SEG).1;
        assert_eq!((r.base, ids(&r)), (LogId::new(4, 500), vec![(4, 501), (5, 502)]));
    }

    #[test]
    fn segments_roll_and_recover_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 64);
        for i in 1..=20 {
            write(&mut log, vec![e(1, i)]);
        }
        drop(log);
        assert!(segments(dir.path()).len() >= 5, "{:?}", segments(dir.path()));
        let (mut log, r) = open(dir.path(), 64);
        assert_eq!(ids(&r), (1..=20).map(|i| (1, i)).collect::<Vec<_>>());
        write(&mut log, vec![e(2, 21)]);
        drop(log);
        assert_eq!(open(dir.path(), 64).1.entries.len(), 21);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        for i in 1..=5 {
            write(&mut log, vec![e(1, i)]);
        }
        drop(log);
        let seg = segments(dir.path()).remove(0);
        // The segment opens with its start record.
        let fifth = offsets(&seg)[5] as u64;
        let file = OpenOptions::new().write(true).open(&seg).expect("open");
        file.set_len(fs::metadata(&seg).expect("stat").len() - 3).expect("truncate");
        drop(file);

        let (mut log, r) = open(dir.path(), SEG);
        assert_eq!(r.entries.len(), 4);
        assert_eq!(fs::metadata(&seg).expect("stat").len(), fifth);
        write(&mut log, vec![e(2, 5)]);
        drop(log);

        let want = vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 5)];
        for zeros in [3, 8, 20] {
            let mut file = OpenOptions::new().append(true).open(&seg).expect("open");
            file.write_all(&vec![0; zeros]).expect("garbage");
            let (mut log, r) = open(dir.path(), SEG);
            assert_eq!(ids(&r), want, "after {zeros} zero bytes");
            write(&mut log, vec![e(2, 5)]);
        }

        // A last record with a bad checksum and only zeros after it was never acknowledged.
        let mut data = fs::read(&seg).expect("read");
        let last = *offsets(&seg).last().expect("records");
        data[last + HEADER] ^= 0x01;
        data.extend([0; 16]);
        fs::write(&seg, &data).expect("write");
        let (mut log, r) = open(dir.path(), SEG);
        assert_eq!((ids(&r), fs::metadata(&seg).expect("stat").len()), (want, last as u64));
        write(&mut log, vec![e(3, 5)]);
        drop(log);
        assert_eq!(ids(&open(dir.path(), SEG).1)[4], (3, 5));
    }

    #[test]
    fn a_bad_record_before_the_end_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        for i in 1..=3 {
            write(&mut log, vec![e(1, i)]);
        }
        drop(log);
        let seg = segments(dir.path()).remove(0);
        let second = offsets(&seg)[2];
        let mut data = fs::read(&seg).expect("read");
        data[second + HEADER + 2] ^= 0x40;
        fs::write(&seg, &data).expect("write");
        assert_eq!(corrupt_at(dir.path(), SEG), (seg, second as u64));
    }

    /// A last record whose checksum is right but which does not decode was written whole:
    /// it is a format mismatch, not a torn write, and is never cut silently.
    #[test]
    fn a_complete_but_undecodable_last_record_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        write(&mut log, vec![e(1, 1)]);
        drop(log);
        let seg = segments(dir.path()).remove(0);
        let mut data = fs::read(&seg).expect("read");
        let at = data.len();
        let payload = [0xEEu8, 0x01, 0x02];
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        fs::write(&seg, &data).expect("write");
        assert_eq!(corrupt_at(dir.path(), SEG), (seg, at as u64));
    }

    #[test]
    fn a_bad_record_or_a_gap_in_an_earlier_segment_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 1);
        for i in 1..=3 {
            write(&mut log, vec![e(1, i)]);
        }
        drop(log);
        let segs = segments(dir.path());
        assert_eq!(segs.len(), 3);
        // The bad record ends its file, but the segments after it show it was complete.
        let mut data = fs::read(&segs[0]).expect("read");
        let end = data.len() - 1;
        data[end] ^= 0x01;
        fs::write(&segs[0], &data).expect("write");
        assert_eq!(corrupt_at(dir.path(), 1), (segs[0].clone(), offsets(&segs[0])[1] as u64));

        let mut first = Vec::new();
        let LogWrite::Entry(one) = e(1, 1) else { unreachable!() };
        encode(&RecordRef::Entry(&one), &mut first).expect("encode");
        fs::write(&segs[0], first).expect("write");
        fs::remove_file(&segs[1]).expect("rm");
        assert_eq!(corrupt_at(dir.path(), 1), (segs[2].clone(), 0));
    }

    fn compact(log: &mut FileLog, to: LogId, hs: HardState) {
        let mut batch = batch(vec![LogWrite::HardState(hs)]);
        batch.compact_to = Some(to);
        block_on(log.submit(batch)).expect("answered").expect("durable");
    }

    /// Compaction deletes whole segments at or below the point, the hard state survives
    /// them, and the log reopens from the first segment kept, with absolute indexes.
    #[test]
    fn compaction_deletes_old_segments_and_the_log_reopens_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 64);
        let hs = HardState { term: 1, voted_for: Some(1), commit: 15 };
        write(&mut log, vec![LogWrite::HardState(hs)]);
        for i in 1..=20 {
            write(&mut log, vec![e(1, i)]);
        }
        let before = segments(dir.path()).len();
        compact(&mut log, LogId::new(1, 12), hs);
        let after = segments(dir.path()).len();
        assert!(after < before, "{before} segments before, {after} after");
        drop(log);
        let (mut log, r) = open(dir.path(), 64);
        assert_eq!(r.hard_state, hs, "the hard state went with the segments");
        assert!(r.base.index > 0 && r.base.index <= 12, "base {:?}", r.base);
        assert_eq!(r.last(), LogId::new(1, 20));
        assert_eq!(r.term_at(r.base.index), Some(1));
        write(&mut log, vec![e(2, 21)]);
        compact(&mut log, LogId::new(1, 20), hs);
        drop(log);
        let r = open(dir.path(), 64).1;
        assert_eq!(r.last(), LogId::new(2, 21));
        assert!(r.base.index <= 20);
    }

    /// Compaction never goes past an entry it does not cover, nor deletes the current
    /// segment, and a segment is never started by a batch that cuts a suffix (it would need
    /// the segment before it to be read right).
    #[test]
    fn compaction_keeps_what_is_not_covered_and_cuts_stay_with_their_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 32);
        for i in 1..=6 {
            write(&mut log, vec![e(1, i)]);
        }
        let n = segments(dir.path()).len();
        write(&mut log, vec![e(2, 5)]);
        assert_eq!(segments(dir.path()).len(), n, "a cutting batch started a segment");
        write(&mut log, vec![e(2, 6)]);
        assert_eq!(segments(dir.path()).len(), n + 1);
        let hs = HardState { term: 2, voted_for: None, commit: 6 };
        compact(&mut log, LogId::new(1, 3), hs);
        drop(log);
        let r = open(dir.path(), 32).1;
        assert!(r.base.index <= 3);
        assert_eq!(r.entries.last().map(|e| e.log_id()), Some(LogId::new(2, 6)));
        assert_eq!(r.term_at(5), Some(2));
        // Everything, at once: only the current segment is left.
        let (mut log, _) = open(dir.path(), 32);
        compact(&mut log, LogId::new(2, 6), hs);
        drop(log);
        assert_eq!(segments(dir.path()).len(), 1);
        let r = open(dir.path(), 32).1;
        assert_eq!((r.hard_state, r.last()), (hs, LogId::new(2, 6)));
    }

    /// A start record that does not follow the segment before it is damage (a segment in
    /// the middle is missing), even where the entries would line up.
    #[test]
    fn a_start_record_that_does_not_follow_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 1);
        write(&mut log, vec![e(1, 1)]);
        write(&mut log, vec![LogWrite::HardState(HardState::default())]);
        write(&mut log, vec![e(1, 2)]);
        drop(log);
        let segs = segments(dir.path());
        assert_eq!(segs.len(), 3);
        fs::remove_file(&segs[1]).expect("rm");
        open(dir.path(), 1);
        let mut data = fs::read(&segs[2]).expect("read");
        let mut start = Vec::new();
        encode(&RecordRef::Start(LogId::new(2, 1)), &mut start).expect("encode");
        let first = offsets(&segs[2])[1];
        start.extend_from_slice(&data.split_off(first));
        fs::write(&segs[2], start).expect("write");
        assert_eq!(corrupt_at(dir.path(), 1), (segs[2].clone(), 0));
    }

    #[test]
    fn queued_batches_complete_in_order_and_are_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 16 << 10);
        let mut rxs: Vec<_> = (1..=1000).map(|i| log.submit(batch(vec![e(1, i)]))).collect();
        let last = rxs.pop().expect("1000 receivers");
        block_on(last).expect("answered").expect("durable");
        // Senders are completed in order, so every earlier batch has its answer already.
        for mut rx in rxs {
            assert!(matches!(rx.try_recv(), Ok(Some(Ok(())))));
        }
        drop(log);
        let want: Vec<_> = (1..=1000).map(|i| (1, i)).collect();
        assert_eq!(ids(&open(dir.path(), 16 << 10).1), want);
    }

    #[test]
    fn an_empty_batch_is_a_barrier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), SEG);
        write(&mut log, vec![]);
        let mut first = log.submit(batch(vec![e(1, 1)]));
        write(&mut log, vec![]);
        assert!(matches!(first.try_recv(), Ok(Some(Ok(())))));
    }

    #[test]
    fn drop_finishes_queued_batches_before_returning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = open(dir.path(), 4 << 10);
        let _rxs: Vec<_> = (1..=100).map(|i| log.submit(batch(vec![e(1, i)]))).collect();
        drop(log);
        assert_eq!(open(dir.path(), 4 << 10).1.entries.len(), 100);
    }

    #[test]
    fn a_write_error_closes_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = segment_path(dir.path(), 1);
        fs::write(&path, b"").expect("create");
        // A read-only handle makes the first write fail.
        let file = File::open(&path).expect("open read-only");
        let segments = vec![Segment { seq: 1, max_index: 0, starts: false }];
        let mut log =
            FileLog::start(Writer::new(dir.path(), SEG, file, 0, segments, LogId::default()), None).expect("start");
        let a = log.submit(batch(vec![e(1, 1)]));
        let b = log.submit(batch(vec![e(1, 2)]));
        let c = log.submit(batch(vec![]));
        assert!(matches!(block_on(a), Ok(Err(StorageError::Io { op: "write", .. }))));
        assert!(matches!(block_on(b), Ok(Err(StorageError::Closed))));
        assert!(matches!(block_on(c), Ok(Err(StorageError::Closed))));
        let d = log.submit(batch(vec![e(1, 1)]));
        assert!(matches!(block_on(d), Ok(Err(StorageError::Closed))));
    }
}
