//! A sink's overflow queue on disk: when its in-memory queue is full, events are appended here as checksummed
//! records in numbered segment files and replayed oldest first once the sink keeps up again. Nothing is fsynced:
//! this is an overflow buffer, not a durability promise, so a power loss can leave a torn tail that replay cuts off.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::{Event, EventKind};

// On-disk format. A segment `<16-digit seq>.seg` is a run of records: `u32 LE body length | u32 LE crc32(body) |
// body`. The body holds, in order: source, kind name, id?, received_at as `i64 LE` unix seconds + `u32 LE` nanos,
// connection, for_user? (`u64 LE`), stream? (`u32 LE` count, then each string), payload. Strings and the payload
// are `u32 LE length | bytes`; a `?` field is a `u8` tag (0 absent, 1 present) before the value. Nothing may
// follow the payload. The `cursor` file is the text `<seq> <offset>\n`: replay resumes at that byte of that
// segment, or at the start of the first later segment when that one is gone.

/// Default size at which appends roll to a new segment.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 8;
/// No record we write is this large, so a longer length means a damaged header, not a huge event.
const MAX_BODY: usize = 1 << 30;
const READ_BLOCK: usize = 256 << 10;

/// Why the spill could not take or give back events.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// Reading or writing a file of the spill failed.
    #[error("spill I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The append would pass `spill_max_bytes` (or one event is over 1 GiB).
    #[error("spill is full ({max_bytes} bytes)")]
    Full {
        /// The limit.
        max_bytes: u64,
    },
}

/// A damaged or torn record met by [`Spill::read`]; the segment was truncated at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file that was cut.
    pub segment: PathBuf,
    /// Where the damaged record began (the file's new length).
    pub offset: u64,
    /// Bytes removed from the segment.
    pub bytes_cut: u64,
    /// `received_at` of the last good event before the damage, when this process saw one.
    pub last_good_at: Option<DateTime<Utc>>,
}

/// Events read by [`Spill::read`]; they stay in the spill until the chunk is passed to [`Spill::consume`].
#[derive(Debug)]
pub struct Chunk {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Damage met after these events (reported once).
    pub corruption: Option<Corruption>,
    end: Pos,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    seq: u64,
    offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// For the segment being appended, the writer's end; for others the file size.
    len: u64,
}

/// One sink's disk queue. Writer and reader in one value, so replay knows exactly where appends end.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Appends to `segments.back()`. Never set for a segment an earlier run left: its tail may be torn.
    writer: Option<File>,
    /// Everything before this has been consumed.
    cursor: Pos,
    next_seq: u64,
    last_consumed_at: Option<DateTime<Utc>>,
}

fn io_err(path: &Path, source: io::Error) -> SpillError {
    SpillError::Io { path: path.to_owned(), source }
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_cursor(path: &Path) -> Option<Pos> {
    let text = fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some(Pos { seq: parts.next()?.parse().ok()?, offset: parts.next()?.parse().ok()? })
}

impl Spill {
    /// Opens (creating the directory) and takes stock of what an earlier run left, without reading records.
    pub fn open(dir: PathBuf, max_bytes: u64, segment_bytes: u64) -> Result<Spill, SpillError> {
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let Some(seq) = entry.file_name().to_str().and_then(parse_seg_name) else { continue };
            let len = entry.metadata().map_err(|e| io_err(&entry.path(), e))?.len();
            segments.push(Segment { seq, len });
        }
        segments.sort_by_key(|s| s.seq);
        // A missing or unreadable cursor replays everything: duplicates are allowed, loss is not.
        let cursor = read_cursor(&dir.join("cursor")).unwrap_or_default();
        let next_seq = segments.last().map_or(0, |s| s.seq).max(cursor.seq) + 1;
        let mut spill = Spill {
            dir,
            max_bytes,
            segment_bytes,
            segments: segments.into(),
            writer: None,
            cursor,
            next_seq,
            last_consumed_at: None,
        };
        // Segments a crash left between persisting the cursor and deleting them.
        spill.drop_consumed();
        Ok(spill)
    }

    /// Nothing left to replay.
    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Bytes appended and not yet consumed. Disk use can exceed it by the consumed head of the oldest segment.
    pub fn bytes(&self) -> u64 {
        let c = self.cursor;
        let rest = |s: &Segment| if s.seq == c.seq { s.len.saturating_sub(c.offset) } else { s.len };
        self.segments.iter().filter(|s| s.seq >= c.seq).map(rest).sum()
    }

    /// The limit on `bytes()`.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends `events` in order with one write. `Full` (nothing written) when it would take `bytes()` past
    /// `max_bytes`, unless the spill is empty, so that one huge batch cannot wedge it; also `Full` for an event
    /// too large for a record (over 1 GiB encoded). Not fsynced.
    pub fn append(&mut self, events: &[Event]) -> Result<u64, SpillError> {
        let mut buf = Vec::new();
        for event in events {
            if encode_record(event, &mut buf) > MAX_BODY {
                return Err(SpillError::Full { max_bytes: self.max_bytes });
            }
        }
        let size = buf.len() as u64;
        if size == 0 {
            return Ok(0);
        }
        if !self.is_empty() && self.bytes().saturating_add(size) > self.max_bytes {
            return Err(SpillError::Full { max_bytes: self.max_bytes });
        }
        let fits = self.segments.back().is_some_and(|s| s.len == 0 || s.len + size <= self.segment_bytes);
        let mut file = match self.writer.take() {
            Some(file) if fits => file,
            _ => self.new_segment()?,
        };
        let Some(seg) = self.segments.back_mut() else {
            return Err(io_err(&self.dir, io::Error::other("spill has a writer but no segment")));
        };
        let path = self.dir.join(format!("{:016}.seg", seg.seq));
        if let Err(e) = file.write_all(&buf) {
            // Cut a partial write back to whole records. If even that fails the segment is left without a
            // writer, and the next run's replay cuts the torn tail.
            let _ = file.set_len(seg.len);
            return Err(io_err(&path, e));
        }
        seg.len += size;
        self.writer = Some(file);
        Ok(size)
    }

    fn new_segment(&mut self) -> Result<File, SpillError> {
        let path = self.seg_path(self.next_seq);
        let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| io_err(&path, e))?;
        self.segments.push_back(Segment { seq: self.next_seq, len: 0 });
        self.next_seq += 1;
        Ok(file)
    }

    fn seg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.seg"))
    }

    /// Reads up to `max_events` from the consumed position, oldest first, without consuming them: a second call
    /// before `consume` returns the same events. Stops at a torn or damaged record, truncates its segment there
    /// and reports it in `corruption`; replay then goes on with the next segment. Logs nothing.
    pub fn read(&mut self, max_events: usize) -> Result<Chunk, SpillError> {
        let mut events = Vec::new();
        let mut end = self.cursor;
        for i in 0..self.segments.len() {
            let seg = self.segments[i];
            if events.len() >= max_events {
                break;
            }
            if seg.seq < end.seq {
                continue;
            }
            if seg.seq > end.seq {
                end = Pos { seq: seg.seq, offset: 0 };
            }
            match self.scan(seg, end.offset, max_events, &mut events)? {
                Ok(offset) => end.offset = offset,
                Err(offset) => {
                    let corruption = self.cut(i, offset, &events)?;
                    return Ok(Chunk { events, corruption: Some(corruption), end: Pos { seq: seg.seq, offset } });
                }
            }
        }
        Ok(Chunk { events, corruption: None, end })
    }

    /// Decodes records of `seg` from `start` into `out`: `Ok(where it stopped)` or `Err(offset of a bad record)`.
    fn scan(&self, seg: Segment, start: u64, max: usize, out: &mut Vec<Event>) -> Result<Result<u64, u64>, SpillError> {
        if start >= seg.len || out.len() >= max {
            return Ok(Ok(start));
        }
        let path = self.seg_path(seg.seq);
        let mut file = File::open(&path).map_err(|e| io_err(&path, e))?;
        file.seek(SeekFrom::Start(start)).map_err(|e| io_err(&path, e))?;
        let mut blocks = Blocks { file, buf: Vec::new(), pos: 0, left: seg.len - start };
        let mut offset = start;
        while offset < seg.len && out.len() < max {
            let Some(header) = blocks.peek(HEADER).map_err(|e| io_err(&path, e))? else { return Ok(Err(offset)) };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len > MAX_BODY || offset + (HEADER + len) as u64 > seg.len {
                return Ok(Err(offset));
            }
            let Some(record) = blocks.peek(HEADER + len).map_err(|e| io_err(&path, e))? else { return Ok(Err(offset)) };
            let body = &record[HEADER..];
            let Some(event) = (crc32fast::hash(body) == crc).then(|| decode(body)).flatten() else {
                return Ok(Err(offset));
            };
            out.push(event);
            blocks.pos += HEADER + len;
            offset += (HEADER + len) as u64;
        }
        Ok(Ok(offset))
    }

    /// Truncates segment `index` at the bad record at `offset`, so later runs do not meet it again.
    fn cut(&mut self, index: usize, offset: u64, events: &[Event]) -> Result<Corruption, SpillError> {
        let Segment { seq, len } = self.segments[index];
        let path = self.seg_path(seq);
        OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(offset)).map_err(|e| io_err(&path, e))?;
        if index + 1 == self.segments.len() {
            // Appends go to a fresh segment rather than after damage we do not understand.
            self.writer = None;
        }
        self.segments[index].len = offset;
        let last_good_at = events.last().map(|e| e.received_at).or(self.last_consumed_at);
        Ok(Corruption { segment: path, offset, bytes_cut: len.saturating_sub(offset), last_good_at })
    }

    /// Marks `chunk` as delivered: advances and persists the cursor (no fsync: a crash replays a little again) and
    /// deletes fully consumed segments, the one being appended to included. A chunk already consumed is a no-op.
    pub fn consume(&mut self, chunk: &Chunk) -> Result<(), SpillError> {
        if chunk.end < self.cursor {
            return Ok(());
        }
        if chunk.end > self.cursor {
            self.last_consumed_at = chunk.events.last().map(|e| e.received_at).or(self.last_consumed_at);
            self.cursor = chunk.end;
            // Persisted before deleting anything, so a crash in between cannot move replay back into deleted files.
            let tmp = self.dir.join("cursor.tmp");
            fs::write(&tmp, format!("{} {}\n", self.cursor.seq, self.cursor.offset)).map_err(|e| io_err(&tmp, e))?;
            let path = self.dir.join("cursor");
            fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        }
        // Also when the cursor stays put: a corruption found right at it may have emptied its segment.
        self.drop_consumed();
        Ok(())
    }

    fn drop_consumed(&mut self) {
        while let Some(&first) = self.segments.front() {
            if first.seq > self.cursor.seq {
                // The cursor's own segment is gone; the start of the next one is the same position.
                self.cursor = Pos { seq: first.seq, offset: 0 };
            }
            if first.seq == self.cursor.seq && self.cursor.offset < first.len {
                break;
            }
            if self.segments.len() == 1 {
                self.writer = None;
            }
            let path = self.seg_path(first.seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Harmless to keep: it holds nothing unconsumed, and the next consume tries again.
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete consumed spill segment");
                    break;
                }
            }
            self.segments.pop_front();
        }
    }
}

/// Buffered reading of one segment in large blocks, never past the length the spill knows for it.
struct Blocks {
    file: File,
    buf: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Blocks {
    /// The next `n` bytes, or None when the file ends first.
    fn peek(&mut self, n: usize) -> io::Result<Option<&[u8]>> {
        if self.buf.len() - self.pos < n {
            self.buf.drain(..self.pos);
            self.pos = 0;
            let want = ((n - self.buf.len()).max(READ_BLOCK) as u64).min(self.left);
            let got = (&mut self.file).take(want).read_to_end(&mut self.buf)? as u64;
            // Shorter than stat said means someone cut the file: what is missing stays missing.
            self.left = if got < want { 0 } else { self.left - got };
            if self.buf.len() < n {
                return Ok(None);
            }
        }
        Ok(Some(&self.buf[self.pos..self.pos + n]))
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_opt<T>(out: &mut Vec<u8>, value: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    out.push(u8::from(value.is_some()));
    if let Some(value) = value {
        put(out, value);
    }
}

/// Appends one record to `out` and returns its body length.
fn encode_record(event: &Event, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    put_bytes(out, event.source.as_bytes());
    put_bytes(out, event.kind.as_str().as_bytes());
    put_opt(out, event.id.as_deref(), |out, id| put_bytes(out, id.as_bytes()));
    out.extend_from_slice(&event.received_at.timestamp().to_le_bytes());
    out.extend_from_slice(&event.received_at.timestamp_subsec_nanos().to_le_bytes());
    put_bytes(out, event.connection.as_bytes());
    put_opt(out, event.for_user, |out, user| out.extend_from_slice(&user.to_le_bytes()));
    put_opt(out, event.stream.as_deref(), |out, list| {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        list.iter().for_each(|s| put_bytes(out, s.as_bytes()));
    });
    put_bytes(out, &event.payload);
    let body_len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    body_len
}

/// Bounds-checked reader over a record body; every accessor is None when the body runs out.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take()?) as usize;
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn opt<T>(&mut self, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.take::<1>()? {
            [0] => Some(None),
            [1] => value(self).map(Some),
            _ => None,
        }
    }
}

fn decode(body: &[u8]) -> Option<Event> {
    let mut f = Fields(body);
    let source: Arc<str> = f.str()?.into();
    let kind = f.str()?;
    let id = f.opt(|f| f.str().map(Box::from))?;
    let secs = i64::from_le_bytes(f.take()?);
    let received_at = DateTime::from_timestamp(secs, u32::from_le_bytes(f.take()?))?;
    let connection: Arc<str> = f.str()?.into();
    let for_user = f.opt(|f| f.take().map(u64::from_le_bytes))?;
    let stream = f.opt(|f| {
        let count = u32::from_le_bytes(f.take()?);
        // No capacity from `count`: each string costs at least 4 bytes, so the body bounds the loop.
        let mut list = Vec::new();
        for _ in 0..count {
            list.push(f.str()?.to_owned());
        }
        Some(Arc::<[String]>::from(list))
    })?;
    let payload = Bytes::copy_from_slice(f.bytes()?);
    if !f.0.is_empty() {
        return None;
    }
    // Interned only once the whole body checks out, so damaged bytes leak no kind names.
    Some(Event { source, kind: EventKind::intern(kind), id, received_at, connection, for_user, stream, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> Event {
        Event {
            source: Arc::from(format!("src{}", i % 3).as_str()),
            kind: if i.is_multiple_of(2) { EventKind::new("post") } else { EventKind::GAP },
            id: (!i.is_multiple_of(4)).then(|| format!("id-{i}").into_boxed_str()),
            received_at: DateTime::from_timestamp(1_700_000_000 + i as i64, (i as u32 * 7919) % 1_000_000_000).unwrap(),
            connection: Arc::from("conn-1"),
            for_user: i.is_multiple_of(3).then_some(i * 1000),
            stream: (!i.is_multiple_of(5)).then(|| Arc::from(vec![format!("s{i}"), String::new()])),
            payload: Bytes::from((0..i % 200).map(|b| (b as u8).wrapping_mul(37) ^ 0xff).collect::<Vec<u8>>()),
        }
    }

    fn evs(range: std::ops::Range<u64>) -> Vec<Event> {
        range.map(ev).collect()
    }

    /// Debug output covers every field, payload bytes included.
    fn assert_same(got: &[Event], want: &[Event]) {
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    fn record_len(e: &Event) -> u64 {
        let mut buf = Vec::new();
        encode_record(e, &mut buf);
        buf.len() as u64
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.retain(|p| p.extension().is_some_and(|x| x == "seg"));
        files.sort();
        files
    }

    fn disk_bytes(dir: &Path) -> u64 {
        seg_files(dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
    }

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Spill {
        Spill::open(dir.to_path_buf(), max_bytes, segment_bytes).unwrap()
    }

    /// Reads and consumes until empty, returning the events and how many corruptions were met.
    fn drain(spill: &mut Spill, per_read: usize) -> (Vec<Event>, usize) {
        let (mut out, mut corruptions) = (Vec::new(), 0);
        while !spill.is_empty() {
            let chunk = spill.read(per_read).unwrap();
            corruptions += usize::from(chunk.corruption.is_some());
            out.extend(chunk.events.iter().cloned());
            spill.consume(&chunk).unwrap();
        }
        (out, corruptions)
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spill/sink");
        let mut spill = open(&dir, 1 << 20, SEGMENT_BYTES);
        assert!(spill.is_empty());
        let all = evs(0..30);
        all.chunks(10).for_each(|batch| assert!(spill.append(batch).unwrap() > 0));
        assert_eq!(spill.bytes(), disk_bytes(&dir));
        assert_eq!(spill.bytes(), all.iter().map(record_len).sum::<u64>());
        let (got, corruptions) = drain(&mut spill, 4);
        assert_same(&got, &all);
        assert_eq!((spill.bytes(), corruptions), (0, 0));
        assert!(seg_files(&dir).is_empty());
    }

    #[test]
    fn reopen_resumes_at_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let all = evs(0..20);
        open(tmp.path(), 1 << 20, SEGMENT_BYTES).append(&all).unwrap();
        let mut spill = open(tmp.path(), 1 << 20, SEGMENT_BYTES);
        assert_same(&spill.read(100).unwrap().events, &all);
        let half = spill.read(10).unwrap();
        assert_same(&half.events, &all[..10]);
        spill.consume(&half).unwrap();
        drop(spill);
        assert_same(&drain(&mut open(tmp.path(), 1 << 20, SEGMENT_BYTES), 100).0, &all[10..]);
    }

    #[test]
    fn segments_roll_and_are_deleted_as_replay_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spill = open(tmp.path(), 1 << 20, 4096);
        let all = evs(0..300);
        all.iter().for_each(|e| assert!(spill.append(std::slice::from_ref(e)).unwrap() > 0));
        let mut counts = vec![seg_files(tmp.path()).len()];
        assert!(counts[0] > 3, "{counts:?}");
        let mut got = Vec::new();
        while !spill.is_empty() {
            let chunk = spill.read(25).unwrap();
            got.extend(chunk.events.iter().cloned());
            spill.consume(&chunk).unwrap();
            counts.push(seg_files(tmp.path()).len());
        }
        assert_same(&got, &all);
        assert!(counts.windows(2).all(|w| w[1] <= w[0]));
        assert!(counts[counts.len() / 2] < counts[0], "{counts:?}");
        assert_eq!(counts.last(), Some(&0));
    }

    #[test]
    fn max_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, batch) = (tmp.path().join("a"), evs(0..10));
        let size: u64 = batch.iter().map(record_len).sum();
        let mut spill = open(&dir, size + size / 2, SEGMENT_BYTES);
        assert_eq!(spill.append(&batch).unwrap(), size);
        assert!(matches!(spill.append(&batch), Err(SpillError::Full { max_bytes }) if max_bytes == size + size / 2));
        assert_eq!((spill.bytes(), disk_bytes(&dir)), (size, size));
        let chunk = spill.read(100).unwrap();
        spill.consume(&chunk).unwrap();
        assert_eq!(spill.append(&batch).unwrap(), size);

        let mut tiny = open(&tmp.path().join("b"), 10, SEGMENT_BYTES);
        assert_eq!(tiny.append(&batch).unwrap(), size);
        assert!(matches!(tiny.append(&batch[..1]), Err(SpillError::Full { .. })));
        assert_same(&drain(&mut tiny, 3).0, &batch);
    }

    #[test]
    fn torn_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let all = evs(0..5);
        open(tmp.path(), 1 << 20, SEGMENT_BYTES).append(&all).unwrap();
        let seg = seg_files(tmp.path()).pop().unwrap();
        let total = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(total - 7).unwrap();

        let mut spill = open(tmp.path(), 1 << 20, SEGMENT_BYTES);
        let chunk = spill.read(100).unwrap();
        assert_same(&chunk.events, &all[..4]);
        let (last, cut) = (record_len(&all[4]), chunk.corruption.clone().unwrap());
        assert_eq!((&cut.segment, cut.offset, cut.bytes_cut), (&seg, total - last, last - 7));
        assert_eq!(cut.last_good_at, Some(all[3].received_at));
        assert_eq!(fs::metadata(&seg).unwrap().len(), total - last);

        spill.append(&[ev(100)]).unwrap();
        let chunk = spill.read(100).unwrap();
        assert!(chunk.corruption.is_none());
        assert_same(&chunk.events, &[&all[..4], &[ev(100)]].concat());
        spill.consume(&chunk).unwrap();
        assert!(spill.is_empty());
    }

    #[test]
    fn corrupt_middle_segment() {
        let tmp = tempfile::tempdir().unwrap();
        // segment_bytes 1: every append opens a segment of its own.
        let mut spill = open(tmp.path(), 1 << 20, 1);
        let all = evs(0..9);
        all.chunks(3).for_each(|batch| assert!(spill.append(batch).unwrap() > 0));
        let segs = seg_files(tmp.path());
        assert_eq!(segs.len(), 3);
        let mut bytes = fs::read(&segs[0]).unwrap();
        let bad_at = record_len(&all[0]);
        bytes[bad_at as usize + HEADER + 2] ^= 0x40;
        fs::write(&segs[0], &bytes).unwrap();

        let chunk = spill.read(100).unwrap();
        assert_same(&chunk.events, &all[..1]);
        let cut = chunk.corruption.clone().unwrap();
        assert_eq!((&cut.segment, cut.offset, cut.bytes_cut), (&segs[0], bad_at, bytes.len() as u64 - bad_at));
        spill.consume(&chunk).unwrap();
        assert!(!segs[0].exists());
        assert_eq!(drain(&mut spill, 100).0.first().map(|e| format!("{e:?}")), Some(format!("{:?}", all[3])));
    }

    #[test]
    fn garbage_never_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        let random: Vec<u8> = (0..70_000).map(|_| noise()).collect();
        // Noise; a checksum that matches over a body that does not decode; an absurd length.
        let mut valid_crc = [100u32.to_le_bytes(), crc32fast::hash(&random[..100]).to_le_bytes()].concat();
        valid_crc.extend_from_slice(&random[..100]);
        let absurd = [[0xff, 0xff, 0xff, 0x7f], [0; 4], [0; 4]].concat();
        for (seq, bytes) in [(1, &random), (2, &valid_crc), (3, &absurd)] {
            fs::write(tmp.path().join(format!("{seq:016}.seg")), bytes).unwrap();
        }
        fs::write(tmp.path().join("cursor"), "garbage").unwrap();
        let mut spill = open(tmp.path(), 1 << 20, SEGMENT_BYTES);
        let (got, corruptions) = drain(&mut spill, 10);
        assert_eq!((got.len(), corruptions), (0, 3));
        assert!(seg_files(tmp.path()).is_empty());

        let mut record = Vec::new();
        encode_record(&ev(7), &mut record);
        let body = &record[HEADER..];
        assert!(decode(body).is_some());
        assert!((0..body.len()).all(|n| decode(&body[..n]).is_none()));
        for i in 0..body.len() {
            let mut damaged = body.to_vec();
            damaged[i] ^= noise() | 1;
            let _ = decode(&damaged);
        }
        (0..2000).for_each(|n| drop(decode(&random[n..n + n % 300])));
    }
}
