//! The `file` sink: appends one line per event to files named by a path
//! template (`data/{source}/%Y-%m-%d.jsonl`), rotates by size into `.1`, `.2`,
//! ... files, and repairs a partial last line that a crash left behind. A
//! file deleted, moved or replaced under it (logrotate, an operator) is
//! noticed before the next write and the path is opened afresh.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::encode::{encode_event, OutputFormat};
use super::sink::{parse_settings, Sink, SinkBuildContext, SinkKind};
use crate::error::SinkError;
use crate::event::Event;

/// The `file` sink kind, as registered in [`super::SinkRegistry::builtin`].
pub const KIND: SinkKind = SinkKind { name: "file", build, preflight };

/// Open files per sink; a template with `{source}` and many sources would
/// otherwise run into the process's descriptor limit.
const MAX_OPEN_FILES: usize = 32;

/// Bytes held per file before they are handed to the OS within a batch: a
/// flush of 1,024 typical tweets (3-4 KB each) is one write(2). Bounded, with
/// at most `MAX_OPEN_FILES` files, to 128 MiB per sink.
const WRITE_BUFFER_BYTES: usize = 4 << 20;

/// `fsync = "batch"` syncs at most this often, so that small batches at high
/// rates do not turn into one disk flush each.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The placeholder for the event's (sanitised) source name.
pub const SOURCE_PLACEHOLDER: &str = "{source}";

const fn default_rotate_bytes() -> u64 {
    1 << 30
}

/// When written lines are forced to stable storage (`fsync = "..."`).
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Never call `sync_data`; lines reach the OS at every flush.
    Never,
    /// Lines reach the OS at every flush; `sync_data` at most every 100 ms and
    /// when a file is closed.
    #[default]
    Batch,
    /// `sync_data` after every event.
    Always,
}

/// Settings of a `[[sinks]]` table with `kind = "file"`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Path template: `{source}` and strftime fields such as `%Y-%m-%d`,
    /// resolved from each event's source and `received_at` (UTC).
    pub path: String,
    /// `envelope` (default) or `payload`.
    #[serde(default)]
    pub format: OutputFormat,
    /// A file that would grow past this continues in the next numbered file.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// `never`, `batch` (default) or `always`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
}

fn build(settings: serde_json::Value, ctx: &SinkBuildContext) -> Result<Box<dyn Sink>, SinkError> {
    let settings: FileSettings = parse_settings(settings, ctx)?;
    Ok(Box::new(FileSink::new(settings, ctx)?))
}

fn preflight(settings: &serde_json::Value, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    let settings: FileSettings = parse_settings(settings.clone(), ctx)?;
    check_rotate_bytes(settings.rotate_bytes, ctx)?;
    let template = PathTemplate::parse(&settings.path).map_err(|message| path_error(ctx, message))?;
    let path = template.resolve("check", &Utc::now()).map_err(|e| path_error(ctx, e.to_string()))?;
    probe_writable(&path).map_err(|message| path_error(ctx, message))
}

fn path_error(ctx: &SinkBuildContext, message: String) -> SinkError {
    SinkError::Config { key: ctx.key("path"), message }
}

fn check_rotate_bytes(rotate_bytes: u64, ctx: &SinkBuildContext) -> Result<(), SinkError> {
    if rotate_bytes == 0 {
        return Err(SinkError::Config { key: ctx.key("rotate_bytes"), message: "must be at least 1".into() });
    }
    Ok(())
}

/// Creates what `path` needs and opens it for append, then removes whatever
/// the probe itself created, so `streamherd check` leaves no trace.
fn probe_writable(path: &Path) -> Result<(), String> {
    let mut created_dirs = Vec::new();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dir = parent;
        while fs::symlink_metadata(dir).is_err() {
            created_dirs.push(dir.to_path_buf());
            match dir.parent() {
                Some(up) if !up.as_os_str().is_empty() => dir = up,
                _ => break,
            }
        }
        if let Err(e) = fs::create_dir_all(parent) {
            remove_dirs(&created_dirs);
            return Err(format!("cannot create directory {}: {e}", parent.display()));
        }
    }
    let existed = fs::symlink_metadata(path).is_ok();
    let result = match OpenOptions::new().append(true).create(true).open(path) {
        Ok(file) => {
            let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
            drop(file);
            if !existed && empty {
                // Best effort: failing to tidy up does not make the path unwritable.
                let _ = fs::remove_file(path);
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot open {} for appending: {e}", path.display())),
    };
    remove_dirs(&created_dirs);
    result
}

/// Removes directories deepest first; `remove_dir` refuses non-empty ones, so
/// anything another process put there meanwhile stays.
fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = fs::remove_dir(dir);
    }
}

/// Makes a source name safe as one path component: it cannot name a parent
/// directory or contain a separator, whatever the config says. Public so
/// that readers of the archive (`streamherd coverage`) find the same paths.
pub fn sanitise_source(source: &str) -> String {
    let mut name: String = source.chars().map(|c| if matches!(c, '/' | '\\' | '\0') { '_' } else { c }).collect();
    if name.contains("..") {
        name = name.replace("..", "__");
    }
    if name.is_empty() || name == "." {
        name = "_".into();
    }
    name
}

/// A parsed `path` template.
#[derive(Debug, Clone)]
struct PathTemplate {
    items: Vec<Item<'static>>,
    /// Whether the resolved path depends on nothing finer than the second, so
    /// a resolution can be reused for every event of the same second.
    per_second: bool,
}

impl PathTemplate {
    fn parse(template: &str) -> Result<Self, String> {
        if template.trim().is_empty() {
            return Err("the path template is empty".into());
        }
        for (at, _) in template.match_indices('{') {
            if !template[at..].starts_with(SOURCE_PLACEHOLDER) {
                return Err(format!(
                    "unknown placeholder at byte {at} of `{template}` (the only placeholder is {SOURCE_PLACEHOLDER})"
                ));
            }
        }
        let items = StrftimeItems::new(template)
            .parse_to_owned()
            .map_err(|_| format!("`{template}` has an unknown or incomplete % field (see strftime)"))?;
        let mut parsed = PathTemplate { items, per_second: false };
        let probe_at = |nanos| Utc.timestamp_opt(981_173_106, nanos).single();
        let per_second = match (probe_at(0), probe_at(123_456_789)) {
            (Some(a), Some(b)) => match (parsed.format_time(&a), parsed.format_time(&b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => return Err(format!("`{template}` cannot be formatted as a UTC time")),
            },
            _ => false,
        };
        parsed.per_second = per_second;
        Ok(parsed)
    }

    fn format_time(&self, at: &DateTime<Utc>) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        write!(out, "{}", at.format_with_items(self.items.iter()))?;
        Ok(out)
    }

    /// The file path for an event of `source` received `at`. The time fields
    /// are expanded before `{source}` is, so a `%` in a source name stays literal.
    fn resolve(&self, source: &str, at: &DateTime<Utc>) -> Result<PathBuf, SinkError> {
        let formatted =
            self.format_time(at).map_err(|_| SinkError::Other(format!("cannot format the path template for {at}")))?;
        Ok(PathBuf::from(formatted.replace(SOURCE_PLACEHOLDER, &sanitise_source(source))))
    }
}

/// Remembers the last resolution: a batch comes from one connection, so its
/// events nearly always share the source and the second.
#[derive(Debug)]
struct Resolver {
    template: PathTemplate,
    last: Option<(Arc<str>, i64, PathBuf)>,
}

impl Resolver {
    fn resolve(&mut self, event: &Event) -> Result<&Path, SinkError> {
        let second = event.received_at.timestamp();
        let hit = self.template.per_second
            && matches!(&self.last, Some((source, at, _)) if *at == second && **source == *event.source);
        if !hit {
            let path = self.template.resolve(&event.source, &event.received_at)?;
            self.last = Some((event.source.clone(), second, path));
        }
        match &self.last {
            Some((_, _, path)) => Ok(path),
            None => Err(SinkError::Other("path resolution left no path".into())),
        }
    }
}

/// `base` with `.N` inserted before its extension (`a.jsonl` → `a.N.jsonl`),
/// or appended when it has none; `N = 0` is `base` itself.
fn numbered(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    let name = match split_name(base) {
        Some((stem, Some(ext))) => format!("{stem}.{index}.{ext}"),
        Some((stem, None)) => format!("{stem}.{index}"),
        None => format!("{}.{index}", base.display()),
    };
    base.with_file_name(name)
}

/// The file name as (stem, extension), split at the last dot that is not the
/// first character (so `.hidden` has no extension).
fn split_name(base: &Path) -> Option<(&str, Option<&str>)> {
    let name = base.file_name().and_then(OsStr::to_str)?;
    Some(match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], Some(&name[dot + 1..])),
        _ => (name, None),
    })
}

/// The highest `N` for which `numbered(base, N)` exists, 0 when none does.
fn highest_index(base: &Path) -> io::Result<u32> {
    let Some((stem, ext)) = split_name(base) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not end in a file name", base.display()),
        ));
    };
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(with_path(e, dir)),
    };
    let mut highest = 0;
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let digits = match ext {
            Some(ext) => match rest.strip_suffix(ext).and_then(|r| r.strip_suffix('.')) {
                Some(digits) => digits,
                None => continue,
            },
            None => rest,
        };
        // Only the spelling `numbered` produces counts: `x.01.jsonl` is not file 1.
        if let Ok(n) = digits.parse::<u32>() {
            if n.to_string() == digits {
                highest = highest.max(n);
            }
        }
    }
    Ok(highest)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    let kind = e.kind();
    io::Error::new(kind, WithPath { path: path.to_path_buf(), inner: e })
}

/// An I/O error and the path it happened on; keeps the OS error code for
/// [`sink_error`].
#[derive(Debug)]
struct WithPath {
    path: PathBuf,
    inner: io::Error,
}

impl std::fmt::Display for WithPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.inner)
    }
}

impl std::error::Error for WithPath {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner)
    }
}

/// The OS error code of `e`, also through [`with_path`].
fn os_code(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| e.get_ref()?.downcast_ref::<WithPath>()?.inner.raw_os_error())
}

/// A full, read-only or failing disk is `Unavailable`: the runtime retries
/// until it takes the lines again (the queue spills meanwhile, `/health` is
/// degraded) instead of dropping them after a few attempts.
fn sink_error(e: io::Error) -> SinkError {
    match os_code(&e) {
        Some(libc::ENOSPC | libc::EROFS | libc::EDQUOT | libc::EIO) => SinkError::Unavailable(e.to_string()),
        _ => SinkError::Io(e),
    }
}

/// Which file `meta` describes (device and inode): a path that names a
/// different one than the open file was moved, deleted or replaced.
#[cfg(unix)]
fn identity(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Opens `path` for append, creating it and its directories, and cuts a
/// partial last line off. Returns the file and its length.
fn open_repaired(path: &Path) -> io::Result<(File, u64)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
    }
    let mut file =
        OpenOptions::new().read(true).append(true).create(true).open(path).map_err(|e| with_path(e, path))?;
    let (kept, removed) = repair_partial_line(&mut file).map_err(|e| with_path(e, path))?;
    if removed > 0 {
        tracing::warn!(
            path = %path.display(),
            removed_bytes = removed,
            "truncated a partial last line left by an earlier run"
        );
    }
    Ok((file, kept))
}

/// Truncates `file` to just after its last `\n` (to 0 when it has none) and
/// returns the new length and the bytes removed. A crash mid-write leaves at most one partial line,
/// since every write is whole lines; this removes it.
fn repair_partial_line(file: &mut File) -> io::Result<(u64, u64)> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok((len, 0));
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut end = len;
    let mut keep = 0;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(at) = memchr::memrchr(b'\n', part) {
            keep = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    file.set_len(keep)?;
    Ok((keep, len - keep))
}

/// One open output file and the lines not yet handed to the OS.
#[derive(Debug)]
struct OpenFile {
    /// The resolved template path; rotation numbers derive from it.
    base: PathBuf,
    /// Rotation number of the current file (0 = `base`).
    index: u32,
    path: PathBuf,
    file: File,
    /// File length including `pending`, for the rotation decision.
    size: u64,
    /// Whole lines not yet written; kept across a failed write so that a
    /// retry continues exactly where the OS stopped and no line is split.
    pending: Vec<u8>,
    /// Bytes reached the OS since the last `sync_data`.
    unsynced: bool,
    last_used: u64,
    /// Device and inode of `file`, to notice the path naming another file.
    id: (u64, u64),
    /// Where the lines of the `FileSink::write` call in progress start in
    /// `pending`, so that a failed call takes back what the OS did not get
    /// (its retry encodes them again; without this they would be written
    /// twice and `pending` would grow with every retry of a full disk).
    mark: usize,
    /// The OS took part of the call's first unwritten line: a roll back
    /// keeps the rest of that line, so that no line is split.
    mark_torn: bool,
}

impl OpenFile {
    fn new(base: PathBuf, index: u32, path: PathBuf, file: File, size: u64, last_used: u64) -> io::Result<OpenFile> {
        let id = identity(&file.metadata().map_err(|e| with_path(e, &path))?);
        Ok(OpenFile {
            base,
            index,
            path,
            file,
            size,
            pending: Vec::new(),
            unsynced: false,
            last_used,
            id,
            mark: 0,
            mark_torn: false,
        })
    }

    /// Takes back the lines of the failed call that are still pending.
    fn roll_back(&mut self) {
        let keep = if self.mark_torn {
            memchr::memchr(b'\n', &self.pending).map_or(self.pending.len(), |i| i + 1)
        } else {
            self.mark.min(self.pending.len())
        };
        self.size -= (self.pending.len() - keep) as u64;
        self.pending.truncate(keep);
    }

    /// Opens the path afresh when it no longer names the open file: lines
    /// written into a deleted or renamed file would never be seen at the
    /// path (after logrotate, or an operator's `rm`), though every write
    /// succeeds. One stat per write(2).
    fn reopen_if_moved(&mut self) -> io::Result<()> {
        let why = match fs::metadata(&self.path) {
            Ok(meta) if identity(&meta) == self.id => return Ok(()),
            Ok(_) => "the path now names another file",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "the file (or its directory) was deleted or moved",
            Err(e) => return Err(with_path(e, &self.path)),
        };
        // Written but not synced lines went with the old file; sync them
        // there first, for whoever holds it now (a rotated name).
        if self.unsynced {
            let _ = self.file.sync_data();
        }
        let (file, size) = open_repaired(&self.path)?;
        tracing::warn!(path = %self.path.display(), why, "output file changed under the sink; reopened the path");
        self.id = identity(&file.metadata().map_err(|e| with_path(e, &self.path))?);
        self.file = file;
        self.size = size + self.pending.len() as u64;
        self.unsynced = false;
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.reopen_if_moved()?;
        }
        while !self.pending.is_empty() {
            match self.file.write(&self.pending) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("{}: the file accepted no bytes", self.path.display()),
                    ))
                }
                Ok(n) => {
                    if n > self.mark {
                        // Lines of the current call reached the OS; did it stop mid-line?
                        self.mark_torn = self.pending[n - 1] != b'\n';
                    }
                    self.mark = self.mark.saturating_sub(n);
                    self.pending.drain(..n);
                    self.unsynced = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_path(e, &self.path)),
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data().map_err(|e| with_path(e, &self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Hands everything to the OS (and to the disk unless the policy is
    /// `never`) before the file is closed; logs what could not be saved.
    fn close(mut self, fsync: FsyncPolicy) {
        if let Err(e) = self.write_pending() {
            tracing::error!(
                path = %self.path.display(),
                lost_bytes = self.pending.len(),
                error = %e,
                "could not write buffered lines before closing the file; they are lost"
            );
        }
        if fsync != FsyncPolicy::Never {
            if let Err(e) = self.sync() {
                tracing::warn!(path = %self.path.display(), error = %e, "sync before closing the file failed");
            }
        }
    }
}

/// The open files of one sink, at most [`MAX_OPEN_FILES`], least recently
/// used closed first.
#[derive(Debug)]
struct OpenFiles {
    files: Vec<OpenFile>,
    rotate_bytes: u64,
    fsync: FsyncPolicy,
    clock: u64,
    last_sync: Option<Instant>,
}

impl OpenFiles {
    /// The slot of the file for `base`, opening it when needed.
    fn slot(&mut self, base: &Path) -> io::Result<usize> {
        self.clock += 1;
        if let Some(i) = self.files.iter().position(|f| f.base.as_os_str() == base.as_os_str()) {
            self.files[i].last_used = self.clock;
            return Ok(i);
        }
        let index = highest_index(base)?;
        let path = numbered(base, index);
        let (file, size) = open_repaired(&path)?;
        if self.files.len() >= MAX_OPEN_FILES {
            if let Some(lru) = self.files.iter().enumerate().min_by_key(|(_, f)| f.last_used).map(|(i, _)| i) {
                self.files.swap_remove(lru).close(self.fsync);
            }
        }
        self.files.push(OpenFile::new(base.to_path_buf(), index, path, file, size, self.clock)?);
        Ok(self.files.len() - 1)
    }

    /// Appends the one whole line `encode` writes to the file in `slot`,
    /// rotating first if the line would take the file past `rotate_bytes`.
    /// The line is encoded straight into the file's pending buffer: a payload
    /// is copied once on its way to write(2), not once per buffer.
    fn append_encoded(&mut self, slot: usize, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let (fsync, rotate_bytes) = (self.fsync, self.rotate_bytes);
        let file = &mut self.files[slot];
        let start = file.pending.len();
        encode(&mut file.pending);
        let line_len = (file.pending.len() - start) as u64;
        if file.size > 0 && file.size.saturating_add(line_len) > rotate_bytes {
            // Rare: the line belongs to the next file. Take it back out, finish
            // this file, and put it in the new one's buffer.
            let line = file.pending.split_off(start);
            while self.files[slot].size > 0 && self.files[slot].size.saturating_add(line_len) > rotate_bytes {
                self.rotate(slot)?;
            }
            self.files[slot].pending.extend_from_slice(&line);
        }
        let file = &mut self.files[slot];
        file.size += line_len;
        if file.pending.len() >= WRITE_BUFFER_BYTES || fsync == FsyncPolicy::Always {
            file.write_pending()?;
        }
        if fsync == FsyncPolicy::Always {
            file.sync()?;
        }
        Ok(())
    }

    /// Finishes the current file of `slot` and continues in the next number.
    fn rotate(&mut self, slot: usize) -> io::Result<()> {
        let fsync = self.fsync;
        let current = &mut self.files[slot];
        current.write_pending()?;
        if fsync != FsyncPolicy::Never {
            current.sync()?;
        }
        let index = current
            .index
            .checked_add(1)
            .ok_or_else(|| io::Error::other(format!("{}: too many rotated files", current.base.display())))?;
        let path = numbered(&current.base, index);
        let (file, size) = open_repaired(&path)?;
        tracing::debug!(path = %path.display(), "rotated to the next file");
        current.id = identity(&file.metadata().map_err(|e| with_path(e, &path))?);
        current.index = index;
        current.path = path;
        current.file = file;
        current.size = size;
        current.unsynced = false;
        Ok(())
    }

    /// Hands every pending line to the OS and syncs as the policy says.
    /// Tries every file and reports the first error.
    fn flush(&mut self) -> io::Result<()> {
        let mut first_error = None;
        for file in &mut self.files {
            if let Err(e) = file.write_pending() {
                first_error.get_or_insert(e);
            }
        }
        let sync_due = match self.fsync {
            FsyncPolicy::Never | FsyncPolicy::Always => false,
            FsyncPolicy::Batch => match self.last_sync {
                Some(at) => at.elapsed() >= SYNC_INTERVAL,
                None => true,
            },
        };
        if sync_due && self.files.iter().any(|f| f.unsynced) {
            for file in &mut self.files {
                if let Err(e) = file.sync() {
                    first_error.get_or_insert(e);
                }
            }
            self.last_sync = Some(Instant::now());
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Appends events as lines to files named by a path template.
///
/// Delivery is at least once: a write error is returned to the sink actor,
/// which retries the whole batch, so lines written before the error may be
/// written again. Lines are never split: bytes the OS did not take stay
/// buffered and are written first next time.
#[derive(Debug)]
pub struct FileSink {
    resolver: Resolver,
    open: OpenFiles,
    format: OutputFormat,
}

impl FileSink {
    /// Builds the sink from its settings; files are opened on first use.
    pub fn new(settings: FileSettings, ctx: &SinkBuildContext) -> Result<Self, SinkError> {
        check_rotate_bytes(settings.rotate_bytes, ctx)?;
        let template = PathTemplate::parse(&settings.path).map_err(|message| path_error(ctx, message))?;
        Ok(FileSink {
            resolver: Resolver { template, last: None },
            open: OpenFiles {
                files: Vec::new(),
                rotate_bytes: settings.rotate_bytes,
                fsync: settings.fsync,
                clock: 0,
                last_sync: None,
            },
            format: settings.format,
        })
    }
}

impl Sink for FileSink {
    fn write(&mut self, events: &[Event]) -> Result<(), SinkError> {
        let format = self.format;
        for file in &mut self.open.files {
            (file.mark, file.mark_torn) = (file.pending.len(), false);
        }
        let result = events.iter().try_for_each(|event| {
            let base = self.resolver.resolve(event)?;
            let slot = self.open.slot(base).map_err(sink_error)?;
            self.open.append_encoded(slot, |out| encode_event(event, format, out)).map_err(sink_error)
        });
        if result.is_err() {
            self.open.files.iter_mut().for_each(OpenFile::roll_back);
        }
        result
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.open.flush().map_err(sink_error)
    }
}

impl Drop for FileSink {
    /// The last flush of a sink: nothing buffered is left behind, and under
    /// `batch` the final lines are synced even if the last sync was recent.
    fn drop(&mut self) {
        for file in self.open.files.drain(..) {
            file.close(self.open.fsync);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::event::EventKind;

    const TWEET: EventKind = EventKind::new("tweet");

    /// 2026-11-22T10:00:00Z.
    const T0: i64 = 1_795_341_600;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).single().expect("valid test timestamp")
    }

    fn ctx() -> SinkBuildContext {
        SinkBuildContext { name: "archive".into(), index: 1, state_dir: PathBuf::from("state") }
    }

    fn event(source: &str, id: usize) -> Event {
        Event {
            source: Arc::from(source),
            kind: TWEET,
            id: Some(id.to_string().into()),
            received_at: at(T0),
            connection: Arc::from(format!("{source}/0")),
            for_user: None,
            stream: None,
            payload: Bytes::from(format!("{{\"id_str\":\"{id:04}\"}}")),
        }
    }

    fn settings(path: &Path) -> FileSettings {
        FileSettings {
            path: path.to_str().expect("utf-8 temp path").to_owned(),
            format: OutputFormat::Payload,
            rotate_bytes: default_rotate_bytes(),
            fsync: FsyncPolicy::Batch,
        }
    }

    fn sink(settings: FileSettings) -> FileSink {
        FileSink::new(settings, &ctx()).expect("valid settings")
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every `{"id_str":"NNNN"}` line of `text`, as ids.
    fn ids(text: &str) -> Vec<usize> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("every line is JSON");
                v["id_str"].as_str().and_then(|s| s.parse().ok()).expect("an id")
            })
            .collect()
    }

    #[test]
    fn template_resolution() {
        let t = PathTemplate::parse("data/{source}/%Y-%m-%d.jsonl").expect("valid template");
        assert!(t.per_second);
        assert_eq!(t.resolve("election", &at(T0)).expect("resolves"), PathBuf::from("data/election/2026-11-22.jsonl"));
        assert_eq!(
            t.resolve("../../etc/pass\\wd", &at(T0)).expect("resolves"),
            PathBuf::from("data/______etc_pass_wd/2026-11-22.jsonl")
        );
        assert_eq!(t.resolve("..", &at(T0)).expect("resolves"), PathBuf::from("data/__/2026-11-22.jsonl"));
        assert_eq!(t.resolve("", &at(T0)).expect("resolves"), PathBuf::from("data/_/2026-11-22.jsonl"));
        // A `%` in a source name is not a strftime field.
        assert_eq!(t.resolve("a%Yb", &at(T0)).expect("resolves"), PathBuf::from("data/a%Yb/2026-11-22.jsonl"));

        let hourly = PathTemplate::parse("{source}-%H{source}.log").expect("valid template");
        assert_eq!(hourly.resolve("x", &at(T0 + 3600)).expect("resolves"), PathBuf::from("x-11x.log"));
        assert!(!PathTemplate::parse("%Y-%f").expect("valid template").per_second);

        assert!(PathTemplate::parse("data/{kind}.jsonl").expect_err("unknown placeholder").contains("{source}"));
        assert!(PathTemplate::parse("data/%Q.jsonl").is_err());
        assert!(PathTemplate::parse("data/%").is_err());
        assert!(PathTemplate::parse(" ").is_err());
    }

    #[test]
    fn numbered_names() {
        let base = Path::new("d/2026-11-22.jsonl");
        assert_eq!(numbered(base, 0), PathBuf::from("d/2026-11-22.jsonl"));
        assert_eq!(numbered(base, 2), PathBuf::from("d/2026-11-22.2.jsonl"));
        assert_eq!(numbered(Path::new("d/log"), 1), PathBuf::from("d/log.1"));
        assert_eq!(numbered(Path::new(".hidden"), 3), PathBuf::from(".hidden.3"));
    }

    #[test]
    fn writes_lines_per_source_and_day() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = sink(settings(&dir.path().join("{source}/%Y-%m-%d.jsonl")));
        let mut next_day = event("b", 3);
        next_day.received_at = at(T0 + 86_400);
        s.write(&[event("a", 1), event("b", 2), next_day, event("a", 4)]).expect("write");
        s.flush().expect("flush");
        assert_eq!(ids(&read(&dir.path().join("a/2026-11-22.jsonl"))), [1, 4]);
        assert_eq!(ids(&read(&dir.path().join("b/2026-11-22.jsonl"))), [2]);
        assert_eq!(ids(&read(&dir.path().join("b/2026-11-23.jsonl"))), [3]);
    }

    #[test]
    fn a_deleted_directory_or_a_rotated_file_is_noticed_and_the_path_reopened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out/x.jsonl");
        let mut s = sink(settings(&path));
        s.write(&[event("a", 1)]).expect("write");
        s.flush().expect("flush");

        // An operator deletes the directory: the next lines must land at the
        // path again, not in the deleted inode.
        fs::remove_dir_all(dir.path().join("out")).expect("remove the directory");
        s.write(&[event("a", 2), event("a", 3)]).expect("write");
        s.flush().expect("flush");
        assert_eq!(ids(&read(&path)), [2, 3]);

        // logrotate without copytruncate: the file is renamed, the path is free.
        let rotated = dir.path().join("out/x.jsonl.1");
        fs::rename(&path, &rotated).expect("rotate");
        s.write(&[event("a", 4)]).expect("write");
        s.flush().expect("flush");
        assert_eq!(ids(&read(&rotated)), [2, 3]);
        assert_eq!(ids(&read(&path)), [4]);

        // Replaced by another file at the same path.
        fs::remove_file(&path).expect("remove");
        fs::write(&path, "{\"id_str\":\"0009\"}\n").expect("replace");
        s.write(&[event("a", 5)]).expect("write");
        s.flush().expect("flush");
        assert_eq!(ids(&read(&path)), [9, 5]);
    }

    #[test]
    fn envelope_lines_are_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out.jsonl");
        let raw = serde_json::json!({ "path": path.to_str().expect("utf-8 temp path") });
        let mut s = build(raw, &ctx()).expect("valid settings");
        s.write(&[event("a", 1)]).expect("write");
        s.flush().expect("flush");
        let text = read(&path);
        assert!(text.starts_with("{\"source\":\"a\",\"kind\":\"tweet\",\"id\":\"1\","), "{text}");
        assert!(text.ends_with("\"payload\":{\"id_str\":\"0001\"}}\n"), "{text}");
    }

    #[test]
    fn a_partial_last_line_is_removed_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.jsonl");
        fs::write(&path, "{\"id_str\":\"0001\"}\n{\"id_str\":\"0002\"}\n{\"id_str\":\"00").expect("seed file");
        let mut s = sink(settings(&path));
        s.write(&[event("a", 3)]).expect("write");
        s.flush().expect("flush");
        assert_eq!(ids(&read(&path)), [1, 2, 3]);

        // With no newline at all, the whole file was one partial line.
        let lone = dir.path().join("lone.jsonl");
        fs::write(&lone, vec![b'x'; 200_000]).expect("seed file");
        let mut s = sink(settings(&lone));
        s.write(&[event("a", 9)]).expect("write");
        drop(s);
        assert_eq!(read(&lone), "{\"id_str\":\"0009\"}\n");

        // A partial line longer than the read chunk is found too.
        let long = dir.path().join("long.jsonl");
        let mut seeded = b"{\"id_str\":\"0001\"}\n".to_vec();
        seeded.extend(vec![b'y'; 150_000]);
        fs::write(&long, seeded).expect("seed file");
        let mut s = sink(settings(&long));
        s.write(&[event("a", 2)]).expect("write");
        drop(s);
        assert_eq!(ids(&read(&long)), [1, 2]);
    }

    #[test]
    fn rotation_keeps_lines_whole_across_numbered_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("2026-11-22.jsonl");
        let line_len = "{\"id_str\":\"0000\"}\n".len() as u64;
        let mut config = settings(&base);
        config.rotate_bytes = line_len * 5 / 2; // two lines fit, a third does not
        let mut s = sink(config);
        let events: Vec<Event> = (0..7).map(|i| event("a", i)).collect();
        s.write(&events[..3]).expect("write");
        s.flush().expect("flush");
        s.write(&events[3..]).expect("write");
        s.flush().expect("flush");
        drop(s);
        let files = ["2026-11-22.jsonl", "2026-11-22.1.jsonl", "2026-11-22.2.jsonl", "2026-11-22.3.jsonl"];
        let mut all = Vec::new();
        for name in files {
            let text = read(&dir.path().join(name));
            assert!(text.len() as u64 <= line_len * 5 / 2, "{name} is too big");
            assert!(text.ends_with('\n'));
            all.extend(ids(&text));
        }
        assert_eq!(all, [0, 1, 2, 3, 4, 5, 6]);
        assert!(!dir.path().join("2026-11-22.4.jsonl").exists());
    }

    #[test]
    fn a_line_longer_than_rotate_bytes_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("big.jsonl");
        let mut config = settings(&base);
        config.rotate_bytes = 5;
        let mut s = sink(config);
        s.write(&[event("a", 1), event("a", 2)]).expect("write");
        drop(s);
        assert_eq!(ids(&read(&base)), [1]);
        assert_eq!(ids(&read(&dir.path().join("big.1.jsonl"))), [2]);
    }

    #[test]
    fn a_restart_continues_in_the_highest_numbered_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join("2026-11-22.jsonl");
        let line = "{\"id_str\":\"0000\"}\n";
        fs::write(&base, line.repeat(2)).expect("seed");
        fs::write(dir.path().join("2026-11-22.1.jsonl"), line.repeat(2)).expect("seed");
        fs::write(dir.path().join("2026-11-22.3.jsonl"), line).expect("seed");
        // Not ours: other spellings and other days.
        fs::write(dir.path().join("2026-11-22.07.jsonl"), line).expect("seed");
        fs::write(dir.path().join("2026-11-22.9.txt"), line).expect("seed");
        fs::write(dir.path().join("2026-11-21.8.jsonl"), line).expect("seed");

        let mut config = settings(&base);
        config.rotate_bytes = (line.len() * 2) as u64;
        let mut s = sink(config);
        s.write(&[event("a", 1), event("a", 2)]).expect("write");
        drop(s);
        assert_eq!(ids(&read(&dir.path().join("2026-11-22.3.jsonl"))), [0, 1]);
        assert_eq!(ids(&read(&dir.path().join("2026-11-22.4.jsonl"))), [2]);
        assert_eq!(ids(&read(&base)), [0, 0]);
    }

    #[test]
    fn at_most_32_files_are_open_and_closed_files_keep_their_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = sink(settings(&dir.path().join("{source}.jsonl")));
        for round in 0..3 {
            let batch: Vec<Event> = (0..40).map(|n| event(&format!("s{n}"), round * 100 + n)).collect();
            s.write(&batch).expect("write");
            assert!(s.open.files.len() <= MAX_OPEN_FILES);
        }
        drop(s);
        for n in 0..40 {
            assert_eq!(ids(&read(&dir.path().join(format!("s{n}.jsonl")))), [n, 100 + n, 200 + n]);
        }
    }

    #[test]
    fn every_fsync_policy_writes_the_same_lines() {
        for fsync in [FsyncPolicy::Never, FsyncPolicy::Batch, FsyncPolicy::Always] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("f.jsonl");
            let mut config = settings(&path);
            config.fsync = fsync;
            let mut s = sink(config);
            s.write(&[event("a", 1), event("a", 2)]).expect("write");
            s.flush().expect("flush");
            assert_eq!(ids(&read(&path)), [1, 2], "{fsync:?}");
            s.write(&[event("a", 3)]).expect("write");
            s.flush().expect("flush");
            assert_eq!(ids(&read(&path)), [1, 2, 3], "{fsync:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let err = preflight(&serde_json::json!({ "path": "x.jsonl", "rotate_byte": 5 }), &ctx())
            .expect_err("typo must be rejected");
        assert!(
            matches!(&err, SinkError::Config { key, message } if key == "sinks[1]" && message.contains("rotate_byte"))
        );
        let err =
            preflight(&serde_json::json!({ "path": "x.jsonl", "fsync": "sometimes" }), &ctx()).expect_err("bad fsync");
        assert!(err.to_string().contains("sometimes"), "{err}");
        let err = preflight(&serde_json::json!({ "path": "x.jsonl", "rotate_bytes": 0 }), &ctx())
            .expect_err("rotate_bytes 0");
        assert!(matches!(&err, SinkError::Config { key, .. } if key == "sinks[1].rotate_bytes"));
        let err = preflight(&serde_json::json!({ "path": "x-{kind}.jsonl" }), &ctx()).expect_err("bad placeholder");
        assert!(matches!(&err, SinkError::Config { key, .. } if key == "sinks[1].path"));
        assert!(preflight(&serde_json::json!({}), &ctx()).is_err(), "path is required");
    }

    #[test]
    fn preflight_leaves_no_trace() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = dir.path().join("new/{source}/%Y.jsonl");
        let raw = serde_json::json!({ "path": template.to_str().expect("utf-8 temp path") });
        preflight(&raw, &ctx()).expect("a fresh directory is writable");
        assert!(!dir.path().join("new").exists());

        // An existing file is opened, not removed or changed.
        let existing = dir.path().join("keep.jsonl");
        fs::write(&existing, "x\n").expect("seed");
        preflight(&serde_json::json!({ "path": existing.to_str().expect("utf-8") }), &ctx()).expect("writable");
        assert_eq!(read(&existing), "x\n");
    }

    #[test]
    fn preflight_fails_under_a_regular_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("afile"), "").expect("seed");
        let path = dir.path().join("afile/x.jsonl");
        let err = preflight(&serde_json::json!({ "path": path.to_str().expect("utf-8") }), &ctx())
            .expect_err("a file is not a directory");
        match &err {
            SinkError::Config { key, message } => {
                assert_eq!(key, "sinks[1].path");
                assert!(message.contains("afile"), "{message}");
                assert!(message.contains("os error"), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn preflight_fails_under_proc() {
        let err = preflight(&serde_json::json!({ "path": "/proc/nope/{source}.jsonl" }), &ctx())
            .expect_err("/proc takes no directories");
        match &err {
            SinkError::Config { key, message } => {
                assert_eq!(key, "sinks[1].path");
                assert!(message.contains("/proc/nope"), "{message}");
                assert!(message.contains("os error"), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_write_into_an_unwritable_place_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("afile"), "").expect("seed");
        let mut s = sink(settings(&dir.path().join("afile/{source}.jsonl")));
        let err = s.write(&[event("a", 1)]).expect_err("cannot create a directory under a file");
        assert!(err.to_string().contains("afile"), "{err}");
    }
}
