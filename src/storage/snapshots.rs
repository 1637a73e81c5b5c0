//! Where a node keeps its snapshots: files under `snapshots/` in the data directory, or
//! memory for tests and simulation.
//!
//! A file is written as `<index>-<term>.snap.tmp`, fsynced, renamed to `.snap`, and the
//! directory fsynced: a crash at any point leaves the old snapshot or the new one whole,
//! never a part. Older snapshots go once a newer one is durable. At start the newest file
//! that verifies whole is used; a damaged one is reported and passed over.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::file::{io_err, sync_dir};
use crate::error::StorageError;
use crate::raft::members::Members;
use crate::snapshot::{self, SectionReader, SnapshotInfo, SnapshotMeta, SnapshotView};

const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

/// A snapshot as stored, with what it holds.
#[derive(Clone, Debug)]
pub struct StoredSnapshot {
    /// What it holds (verified).
    pub info: SnapshotInfo,
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Bytes(Bytes),
}

impl StoredSnapshot {
    /// The whole snapshot, as it is stored.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>, StorageError> {
        match &self.source {
            Source::File(path) => Ok(Box::new(File::open(path).map_err(io_err("open", path))?)),
            Source::Bytes(b) => Ok(Box::new(Cursor::new(b.clone()))),
        }
    }

    /// Up to `max` bytes of the stored snapshot from `offset` (none past its end). Blocks on
    /// the disk for a file.
    pub fn read_at(&self, offset: u64, max: usize) -> Result<Bytes, StorageError> {
        let offset = offset.min(self.info.size);
        let len = max.min((self.info.size - offset) as usize);
        match &self.source {
            Source::Bytes(b) => Ok(b.slice(offset as usize..offset as usize + len)),
            Source::File(path) => {
                let mut f = File::open(path).map_err(io_err("open", path))?;
                f.seek(SeekFrom::Start(offset)).map_err(io_err("seek", path))?;
                let mut buf = vec![0; len];
                f.read_exact(&mut buf).map_err(io_err("read", path))?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// The bytes `namespace`'s state machine wrote into it, if it has a section.
    pub fn section(&self, namespace: &str) -> Result<Option<Box<dyn Read + Send>>, StorageError> {
        let Some(section) = self.info.section(namespace) else { return Ok(None) };
        let reader: Box<dyn Read + Send> = match &self.source {
            Source::File(path) => {
                let mut f = File::open(path).map_err(io_err("open", path))?;
                f.seek(SeekFrom::Start(section.offset)).map_err(io_err("seek", path))?;
                Box::new(SectionReader::new(io::BufReader::new(f)))
            }
            Source::Bytes(b) => Box::new(SectionReader::new(Cursor::new(b.slice(section.offset as usize..)))),
        };
        Ok(Some(reader))
    }
}

/// A node's snapshot store.
#[derive(Clone, Debug)]
pub enum SnapshotStore {
    /// Files in this directory.
    Dir(PathBuf),
    /// The newest snapshot in memory, shared with the test that made it.
    Memory(MemorySnapshots),
}

/// Snapshots kept in memory: the newest only, durable at once.
#[derive(Clone, Debug, Default)]
pub struct MemorySnapshots(Arc<Mutex<Option<Bytes>>>);

impl MemorySnapshots {
    fn get(&self) -> Option<Bytes> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, bytes: Bytes) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }
}

impl SnapshotStore {
    /// Writes a snapshot of `sections` as of `meta` and makes it durable; older ones are
    /// deleted once it is. Blocks: run it off the node's threads (the memory store aside).
    pub fn save(
        &self,
        meta: &SnapshotMeta,
        sections: Vec<(String, SnapshotView)>,
    ) -> Result<StoredSnapshot, StorageError> {
        match self {
            SnapshotStore::Memory(mem) => {
                let mut buf = Vec::new();
                let info = snapshot::write(&mut buf, meta, sections).map_err(io_err("write", Path::new("memory")))?;
                let bytes = Bytes::from(buf);
                mem.set(bytes.clone());
                Ok(StoredSnapshot { info, source: Source::Bytes(bytes) })
            }
            SnapshotStore::Dir(dir) => {
                fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
                let name = format!("{:020}-{:020}", meta.last.index, meta.last.term);
                let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
                let path = dir.join(format!("{name}{SUFFIX}"));
                let written = write_file(&tmp, meta, sections);
                if written.is_err() {
                    // A failed write leaves nothing behind (a full disk must not fill up).
                    let _ = fs::remove_file(&tmp);
                }
                let info = written?;
                fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
                sync_dir(dir)?;
                remove_older(dir, &path, meta.last.index)?;
                Ok(StoredSnapshot { info, source: Source::File(path) })
            }
        }
    }

    /// Starts receiving a snapshot sent by a leader (InstallSnapshot): bytes go to a
    /// temporary file (in memory for the memory store) until [`Receiving::finish`] verifies
    /// them and makes the snapshot the newest. Blocks on the disk.
    pub fn receive(&self) -> Result<Receiving, StorageError> {
        let sink = match self {
            SnapshotStore::Memory(mem) => Sink::Memory(Vec::new(), mem.clone()),
            SnapshotStore::Dir(dir) => {
                fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
                // A leftover of an earlier transfer goes with it, and at start (`latest`).
                let tmp = dir.join(format!("receiving{TMP_SUFFIX}"));
                let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
                Sink::File { file, tmp, dir: dir.clone() }
            }
        };
        Ok(Receiving { sink, written: 0 })
    }

    /// The newest snapshot that verifies whole, if any. Leftover temporary files (a crash
    /// during a write) are removed.
    pub fn latest(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self {
            SnapshotStore::Memory(mem) => match mem.get() {
                None => Ok(None),
                Some(bytes) => {
                    let info = SnapshotInfo::read(&bytes[..], bytes.len() as u64)
                        .map_err(|e| StorageError::Snapshot { path: "memory".into(), source: e })?;
                    Ok(Some(StoredSnapshot { info, source: Source::Bytes(bytes) }))
                }
            },
            SnapshotStore::Dir(dir) => {
                if !dir.exists() {
                    return Ok(None);
                }
                for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
                    let path = entry.map_err(io_err("list", dir))?.path();
                    if path.to_string_lossy().ends_with(TMP_SUFFIX) {
                        tracing::info!(path = %path.display(), "removing a snapshot a crash left half written");
                        fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    }
                }
                for (path, _) in list(dir)?.into_iter().rev() {
                    match verify(&path) {
                        Ok(info) => return Ok(Some(StoredSnapshot { info, source: Source::File(path) })),
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "passing over a damaged snapshot")
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

/// A snapshot file being written, flushed to disk every `SYNC_EVERY` bytes: the log's own
/// fsyncs, on the same disk, then never wait behind one large flush at the end.
struct Paced<'a> {
    file: &'a File,
    unsynced: usize,
}

const SYNC_EVERY: usize = 4 << 20;

impl io::Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A snapshot being received from a leader, chunk by chunk.
#[derive(Debug)]
pub struct Receiving {
    sink: Sink,
    written: u64,
}

#[derive(Debug)]
enum Sink {
    Memory(Vec<u8>, MemorySnapshots),
    File { file: File, tmp: PathBuf, dir: PathBuf },
}

impl Receiving {
    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next bytes (not yet durable). Blocks on the disk.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        match &mut self.sink {
            Sink::Memory(buf, _) => buf.extend_from_slice(bytes),
            Sink::File { file, tmp, .. } => {
                io::Write::write_all(file, bytes).map_err(io_err("write", tmp))?;
            }
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Verifies what was received as a whole snapshot of `last` and makes it the newest:
    /// fsync, rename, fsync of the directory, older snapshots deleted. Anything else (a
    /// damaged or different snapshot) is refused and the bytes are dropped. Blocks on the
    /// disk.
    pub fn finish(self, last: crate::raft::LogId) -> Result<StoredSnapshot, StorageError> {
        let wrong = |path: &Path, info: &SnapshotInfo| StorageError::Snapshot {
            path: path.into(),
            source: snapshot::SnapshotError::Corrupt(format!(
                "received the snapshot of {}/{} where {}/{} was announced",
                info.meta.last.index, info.meta.last.term, last.index, last.term
            )),
        };
        match self.sink {
            Sink::Memory(buf, mem) => {
                let bytes = Bytes::from(buf);
                let info = SnapshotInfo::read(&bytes[..], bytes.len() as u64)
                    .map_err(|e| StorageError::Snapshot { path: "memory".into(), source: e })?;
                if info.meta.last != last {
                    return Err(wrong(Path::new("memory"), &info));
                }
                mem.set(bytes.clone());
                Ok(StoredSnapshot { info, source: Source::Bytes(bytes) })
            }
            Sink::File { file, tmp, dir } => {
                let done = (|| {
                    file.sync_all().map_err(io_err("fsync", &tmp))?;
                    drop(file);
                    let info = verify(&tmp)?;
                    if info.meta.last != last {
                        return Err(wrong(&tmp, &info));
                    }
                    Ok(info)
                })();
                let info = match done {
                    Ok(info) => info,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                };
                let path = dir.join(format!("{:020}-{:020}{SUFFIX}", last.index, last.term));
                fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
                remove_older(&dir, &path, last.index)?;
                Ok(StoredSnapshot { info, source: Source::File(path) })
            }
        }
    }
}

/// Makes the rename of `newest` durable, then deletes the snapshots below `index` (never a
/// newer one: a snapshot written while another was installed must not remove it).
fn remove_older(dir: &Path, newest: &Path, index: u64) -> Result<(), StorageError> {
    sync_dir(dir)?;
    for (old, _) in list(dir)?.into_iter().filter(|(p, (i, _))| p != newest && *i < index) {
        fs::remove_file(&old).map_err(io_err("remove", &old))?;
    }
    sync_dir(dir)
}

/// Builds a data directory from a saved snapshot (`dister snapshot restore`, etcd's
/// `snapshot restore`): the snapshot, its configuration replaced by `members` (a new
/// cluster), and a log that starts right after it. `file` is verified whole first and
/// `data_dir` must be new or empty: otherwise nothing is written. Answers what the snapshot
/// holds.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    members: Members,
    segment_bytes: u64,
) -> Result<SnapshotInfo, StorageError> {
    let info = verify(file)?;
    if data_dir.exists() && fs::read_dir(data_dir).map_err(io_err("list", data_dir))?.next().is_some() {
        return Err(StorageError::NotEmpty { path: data_dir.into() });
    }
    let last = info.meta.last;
    let views = info
        .sections
        .iter()
        .map(|s| {
            let mut f = File::open(file).map_err(io_err("open", file))?;
            f.seek(SeekFrom::Start(s.offset)).map_err(io_err("seek", file))?;
            let mut section = SectionReader::new(io::BufReader::new(f));
            let write: snapshot::WriteView = Box::new(move |out| io::copy(&mut section, out).map(|_| ()));
            Ok((s.namespace.clone(), SnapshotView { items: s.items, write }))
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let store = SnapshotStore::Dir(data_dir.join("snapshots"));
    let saved = store.save(&SnapshotMeta { last, members }, views)?;
    let (mut log, _) = super::FileLog::open(data_dir, segment_bytes)?;
    let hard_state = crate::raft::HardState { term: last.term, voted_for: None, commit: last.index };
    let writes = vec![super::LogWrite::Reset(last), super::LogWrite::HardState(hard_state)];
    let done = super::LogBackend::submit(&mut log, super::WriteBatch::of(writes));
    futures::executor::block_on(done).map_err(|_| StorageError::Closed)??;
    Ok(saved.info)
}

/// Writes the snapshot into `tmp` and makes it durable.
fn write_file(
    tmp: &Path,
    meta: &SnapshotMeta,
    sections: Vec<(String, SnapshotView)>,
) -> Result<SnapshotInfo, StorageError> {
    let started = std::time::Instant::now();
    let file = File::create(tmp).map_err(io_err("create", tmp))?;
    let paced = Paced { file: &file, unsynced: 0 };
    let info = snapshot::write(paced, meta, sections).map_err(io_err("write", tmp))?;
    let written = started.elapsed();
    file.sync_all().map_err(io_err("fsync", tmp))?;
    let (write_ms, fsync_ms) = (written.as_millis() as u64, (started.elapsed() - written).as_millis() as u64);
    tracing::debug!(index = meta.last.index, bytes = info.size, write_ms, fsync_ms, "snapshot file written");
    Ok(info)
}

/// Reads and verifies the snapshot file at `path`.
pub fn verify(path: &Path) -> Result<SnapshotInfo, StorageError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let size = file.metadata().map_err(io_err("stat", path))?.len();
    SnapshotInfo::read(file, size).map_err(|e| StorageError::Snapshot { path: path.into(), source: e })
}

/// A snapshot file and the (index, term) its name carries.
type Listed = (PathBuf, (u64, u64));

/// The `.snap` files in `dir`, oldest first (by index, then term).
fn list(dir: &Path) -> Result<Vec<Listed>, StorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let path = entry.map_err(io_err("list", dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else { continue };
        let Some((index, term)) = stem.split_once('-') else { continue };
        if let (Ok(index), Ok(term)) = (index.parse(), term.parse()) {
            out.push((path, (index, term)));
        }
    }
    out.sort_by_key(|(_, id)| *id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::LogId;
    use crate::raft::members::Members;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta { last: LogId::new(2, index), members: Members::of_voters([(1, "127.0.0.1:7001".to_string())]) }
    }

    fn view(text: &'static str) -> Vec<(String, SnapshotView)> {
        vec![("kv".into(), SnapshotView { items: 1, write: Box::new(move |out| out.write_all(text.as_bytes())) })]
    }

    fn section_text(s: &StoredSnapshot) -> String {
        let mut text = String::new();
        s.section("kv").unwrap().unwrap().read_to_string(&mut text).unwrap();
        text
    }

    /// The newest snapshot wins and replaces the older; a leftover temporary file is
    /// removed; a damaged newest one is passed over for the one before it.
    #[test]
    fn the_newest_whole_snapshot_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::Dir(dir.path().join("snapshots"));
        assert!(store.latest().unwrap().is_none());
        store.save(&meta(10), view("ten")).unwrap();
        let s = store.save(&meta(20), view("twenty")).unwrap();
        assert_eq!(list(&dir.path().join("snapshots")).unwrap().len(), 1, "the older snapshot stayed");
        assert_eq!(section_text(&s), "twenty");
        let latest = store.latest().unwrap().unwrap();
        assert_eq!((latest.info.meta.last.index, section_text(&latest)), (20, "twenty".to_string()));

        // A crash mid-write leaves a temporary file: it is not a snapshot, and goes.
        let tmp = dir.path().join("snapshots").join(format!("{:020}-{:020}{TMP_SUFFIX}", 30, 2));
        fs::write(&tmp, b"half").unwrap();
        assert_eq!(store.latest().unwrap().unwrap().info.meta.last.index, 20);
        assert!(!tmp.exists());

        // A damaged newest snapshot (here: copied over, then cut) is passed over.
        let good = dir.path().join("snapshots").join(format!("{:020}-{:020}{SUFFIX}", 20, 2));
        let bytes = fs::read(&good).unwrap();
        fs::write(
            dir.path().join("snapshots").join(format!("{:020}-{:020}{SUFFIX}", 40, 2)),
            &bytes[..bytes.len() - 3],
        )
        .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().info.meta.last.index, 20);
    }

    /// A snapshot received in chunks becomes the newest only whole and verified: a damaged
    /// one, or another than announced, is refused and leaves nothing behind.
    #[test]
    fn a_received_snapshot_is_installed_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let source = SnapshotStore::Dir(dir.path().join("source"));
        let sent = source.save(&meta(30), view("thirty")).unwrap();
        let bytes = sent.read_at(0, usize::MAX).unwrap();
        let store = SnapshotStore::Dir(dir.path().join("snapshots"));
        store.save(&meta(10), view("ten")).unwrap();
        let receive = |data: &[u8]| {
            let mut r = store.receive().unwrap();
            for chunk in data.chunks(7) {
                r.append(chunk).unwrap();
            }
            assert_eq!(r.written(), data.len() as u64);
            r
        };
        let tmp = dir.path().join("snapshots").join(format!("receiving{TMP_SUFFIX}"));
        let mut damaged = bytes.to_vec();
        damaged[bytes.len() / 2] ^= 1;
        assert!(matches!(receive(&damaged).finish(LogId::new(2, 30)), Err(StorageError::Snapshot { .. })));
        assert!(!tmp.exists());
        assert!(receive(&bytes[..bytes.len() - 1]).finish(LogId::new(2, 30)).is_err(), "a truncated one");
        assert!(receive(&bytes).finish(LogId::new(3, 30)).is_err(), "another than announced");
        assert_eq!(store.latest().unwrap().unwrap().info.meta.last.index, 10, "a refused one replaced the newest");
        let installed = receive(&bytes).finish(LogId::new(2, 30)).unwrap();
        assert_eq!(section_text(&installed), "thirty");
        assert_eq!(store.latest().unwrap().unwrap().info.meta.last.index, 30);
        assert_eq!(list(&dir.path().join("snapshots")).unwrap().len(), 1, "the older one stayed");
        // A snapshot written later at a lower index never removes a newer one.
        store.save(&meta(20), view("twenty")).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().info.meta.last.index, 30);
    }

    #[test]
    fn the_memory_store_keeps_the_newest() {
        let store = SnapshotStore::Memory(MemorySnapshots::default());
        assert!(store.latest().unwrap().is_none());
        store.save(&meta(5), view("five")).unwrap();
        store.save(&meta(7), view("seven")).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!((latest.info.meta.last.index, section_text(&latest)), (7, "seven".to_string()));
    }
}
