//! The per-group append-only journal file holding the handover [`Record`]s.
//!
//! On-disk format, all integers little-endian:
//!
//! ```text
//! file   = header frame*
//! header = "takeover journal" (16 bytes) version:u32 (= 1)
//! frame  = body_len:u32 crc32(body):u32 body
//! body   = epoch.counter:u64 epoch.node:u16 flags:u8 index:u64 checksum:u32 payload
//! flags  = bit 0: epoch.forced; other bits zero
//! ```
//!
//! An append is fsynced (`fdatasync`) once per batch before [`Journal::append`] returns, so
//! a crash can only damage the frames of the one batch whose append had not returned: a
//! torn tail. [`Journal::open`] cuts such a tail, after copying it into the quarantine
//! directory. Damage followed by a valid frame is refused with [`JournalError::Corrupt`]
//! and nothing is cut: a crash leaves the unsynced end of a file short or zero-filled, so
//! a valid frame after damage means the damage hit records that may have been
//! acknowledged (bit rot, a foreign write), and only an operator may decide to drop them.
//! A file system that persisted the pages of one unfinished write out of order could
//! produce the same picture; refusing is then needlessly strict, but safe.
//!
//! Records the core decides to discard ([`Journal::truncate_quarantine`]) are never
//! dropped either: they are copied into a quarantine file first, named
//! `<stem>.<first>-<last>.<reason>.<seq>.quarantine`, where `<stem>` is the journal's file
//! name without extension and `<seq>` a number above every earlier quarantine file of the
//! same journal. A cut torn tail goes to `<stem>.torn-at-<offset>.<seq>.quarantine`. A
//! quarantine file is the journal header followed by the cut bytes, verbatim. Journals
//! that share a quarantine directory must have distinct stems.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use takeover_core::Epoch;
use takeover_core::log::{DiscardReason, LogMeta, Record};

use crate::store::{parent_dir, sync_dir, write_atomic};

/// The largest payload a record may carry. It bounds what a damaged length field can make
/// the scan read, and keeps one record well below what one read or network message holds.
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;

/// What [`Journal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Valid records kept, 1 to `records`.
    pub records: u64,
    /// Bytes of a torn tail cut from the end of the file (0 if none).
    pub torn_bytes_cut: u64,
    /// Frames begun in the cut tail, counted by following their length fields as far as
    /// they are plausible (a torn tail with any bytes counts at least one).
    pub torn_records_cut: u64,
    /// Where the cut bytes were kept.
    pub quarantine_file: Option<PathBuf>,
}

/// Records cut from the journal by [`Journal::truncate_quarantine`], and where they went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineInfo {
    pub path: PathBuf,
    pub count: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub reason: DiscardReason,
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file does not start with a journal header of a version this build reads.
    #[error(
        "{} is not a takeover journal of a known version ({detail}); check the journal \
         path in the configuration, and that this takeover is not older than the one that \
         wrote it",
        .path.display()
    )]
    BadHeader { path: PathBuf, detail: String },
    /// Damage that a crash during an append cannot explain. `index` is the record that
    /// should be at `offset`.
    #[error(
        "journal {} is corrupt at byte {offset}, where record {index} should be: {detail}. \
         Nothing was cut. Stop this node and keep the file for analysis; if the peer holds \
         the group's history, move this journal aside and start this node with \
         --join-only so that it copies the history back from the peer",
        .path.display()
    )]
    Corrupt { path: PathBuf, offset: u64, index: u64, detail: String },
    /// An append that would break the journal's rules; nothing was written.
    #[error("refusing to append to journal {}: {detail}; nothing was written", .path.display())]
    Rejected { path: PathBuf, detail: String },
    /// A quarantine file that [`read_quarantine`] cannot read as records.
    #[error(
        "quarantine file {} cannot be read as records from byte {offset} on: {detail} (a \
         torn-tail quarantine file holds damaged bytes as they were cut, and is expected \
         not to read)",
        .path.display()
    )]
    QuarantineUnreadable { path: PathBuf, offset: u64, detail: String },
    #[error(
        "journal {} is already open (is another takeover agent running on this node?)",
        .path.display()
    )]
    Locked { path: PathBuf },
    /// A write or fsync failed earlier: what reached the disk is unknown, and after a
    /// failed fsync the kernel may have dropped the dirty pages, so no further write is
    /// trusted. Restarting rescans the file.
    #[error(
        "journal {} is unusable after a failed write or fsync; restart the agent so that \
         it rescans the journal",
        .path.display()
    )]
    Poisoned { path: PathBuf },
}

/// An open journal: the file, the offset of every frame, and the log's metadata.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    quarantine_dir: PathBuf,
    stem: String,
    /// Opened read-write and locked (`flock`) for as long as the journal is open.
    file: File,
    /// `offsets[i]` is the file offset of the frame of record `i + 1`.
    offsets: Vec<u64>,
    /// The end of the last valid frame: where the next append goes.
    end: u64,
    meta: LogMeta,
    poisoned: bool,
}

impl Journal {
    /// Opens the journal at `path`, creating it if absent, and checks every frame.
    /// A torn tail is copied into `quarantine_dir` and cut (see [`OpenReport`]); damage
    /// followed by valid frames is refused with [`JournalError::Corrupt`].
    pub fn open(path: &Path, quarantine_dir: &Path) -> Result<(Journal, OpenReport), JournalError> {
        let io_err = |op| {
            let path = path.to_owned();
            move |source| JournalError::Io { path, op, source }
        };
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            // Created whole and durable, so a journal file always has its header.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                write_atomic(path, &HEADER).map_err(io_err("create journal"))?;
            }
            Err(err) => return Err(io_err("open journal")(err)),
        }
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open journal"))?;
        file.try_lock().map_err(|err| match err {
            fs::TryLockError::WouldBlock => JournalError::Locked { path: path.to_owned() },
            fs::TryLockError::Error(source) => io_err("lock journal")(source),
        })?;
        let file_len = file.metadata().map_err(io_err("stat journal"))?.len();
        check_header(&file, file_len).map_err(|detail| JournalError::BadHeader { path: path.to_owned(), detail })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut journal = Journal {
            path: path.to_owned(),
            quarantine_dir: quarantine_dir.to_owned(),
            stem,
            file,
            offsets: Vec::new(),
            end: HEADER_LEN,
            meta: LogMeta::empty(),
            poisoned: false,
        };
        let report = journal.scan(file_len)?;
        Ok((journal, report))
    }

    pub fn meta(&self) -> &LogMeta {
        &self.meta
    }

    pub fn last_index(&self) -> u64 {
        self.meta.last_index()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes the frames of the records after `index` take in the file (the journal
    /// lag in bytes behind a standby durable up to `index`).
    pub fn bytes_after(&self, index: u64) -> u64 {
        match usize::try_from(index).ok().and_then(|i| self.offsets.get(i)) {
            Some(&start) => self.end.saturating_sub(start),
            None => 0,
        }
    }

    /// The journal's file name without extension, which names its quarantine files.
    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// Appends `records`, which must continue the log: indices `last_index + 1`, `+ 2`, …,
    /// epochs not older than the last record's, valid checksums. All frames go out in one
    /// write followed by one `fdatasync`; when this returns `Ok` they are durable.
    pub fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        self.check_usable()?;
        if records.is_empty() {
            return Ok(());
        }
        self.check_continues(records).map_err(|detail| JournalError::Rejected { path: self.path.clone(), detail })?;
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for record in records {
            offsets.push(self.end + buf.len() as u64);
            encode_frame(record, &mut buf);
        }
        let written = self
            .file
            .write_all_at(&buf, self.end)
            .map_err(self.io_err("write journal"))
            .and_then(|()| self.file.sync_data().map_err(self.io_err("fsync journal")));
        if let Err(err) = written {
            self.poisoned = true;
            return Err(err);
        }
        self.offsets.extend(offsets);
        self.end += buf.len() as u64;
        for record in records {
            self.meta.push(record.epoch, 1);
        }
        Ok(())
    }

    /// Records `from..=upto`, clamped to the records that exist (`from` below 1 reads from
    /// 1); empty if the range holds none. Frames are checked again as they are read.
    pub fn read(&self, from: u64, upto: u64) -> Result<Vec<Record>, JournalError> {
        let from = from.max(1);
        let upto = upto.min(self.last_index());
        if from > upto {
            return Ok(Vec::new());
        }
        let start = self.offset_of(from);
        let stop = self.offset_of(upto + 1);
        let mut buf = vec![0; (stop - start) as usize];
        self.file.read_exact_at(&mut buf, start).map_err(self.io_err("read journal"))?;
        let mut records = Vec::with_capacity((upto - from + 1) as usize);
        let mut pos = 0;
        for index in from..=upto {
            let corrupt = |detail: String| JournalError::Corrupt {
                path: self.path.clone(),
                offset: start + pos as u64,
                index,
                detail: format!("{detail} (the file changed on disk after it was opened)"),
            };
            let (record, len) = decode_frame(&buf[pos..]).map_err(corrupt)?;
            if record.index != index {
                return Err(corrupt(format!("found record {}", record.index)));
            }
            records.push(record);
            pos += len;
        }
        Ok(records)
    }

    /// Records from `from` on, at most `max_records` of them and at most `max_bytes` of
    /// frames (payload plus 31 bytes each), but at least one record if `from` exists and
    /// `max_records > 0`, so that a reader always makes progress past a large record.
    pub fn read_limited(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, JournalError> {
        let from = from.max(1);
        if from > self.last_index() || max_records == 0 {
            return Ok(Vec::new());
        }
        let start = self.offset_of(from);
        let mut upto = from;
        while upto < self.last_index()
            && upto - from + 1 < max_records as u64
            && self.offset_of(upto + 2) - start <= max_bytes as u64
        {
            upto += 1;
        }
        self.read(from, upto)
    }

    /// Cuts every record after `keep_upto`, keeping them aside: they are copied into a new
    /// quarantine file, which is fsynced with its directory, and only then is the journal
    /// truncated and fsynced. Returns `None` if there was nothing after `keep_upto`.
    pub fn truncate_quarantine(
        &mut self,
        keep_upto: u64,
        reason: DiscardReason,
    ) -> Result<Option<QuarantineInfo>, JournalError> {
        self.check_usable()?;
        let last_index = self.last_index();
        if keep_upto >= last_index {
            return Ok(None);
        }
        let first_index = keep_upto + 1;
        let cut_at = self.offset_of(first_index);
        let label = format!("{first_index}-{last_index}.{}", reason_name(reason));
        let quarantine = self.quarantine(&label, cut_at, self.end - cut_at)?;
        let truncated =
            self.file.set_len(cut_at).and_then(|()| self.file.sync_all()).map_err(self.io_err("truncate journal"));
        if let Err(err) = truncated {
            self.poisoned = true;
            return Err(err);
        }
        self.offsets.truncate(keep_upto as usize);
        self.meta.truncate(keep_upto);
        self.end = cut_at;
        Ok(Some(QuarantineInfo { path: quarantine, count: last_index - keep_upto, first_index, last_index, reason }))
    }

    /// The file offset of the frame of record `index`, or the end for `last_index + 1`.
    fn offset_of(&self, index: u64) -> u64 {
        self.offsets.get((index - 1) as usize).copied().unwrap_or(self.end)
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> JournalError + use<> {
        let path = self.path.clone();
        move |source| JournalError::Io { path, op, source }
    }

    fn check_usable(&self) -> Result<(), JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned { path: self.path.clone() });
        }
        Ok(())
    }

    /// Why `records` cannot be appended, if they cannot; the text is for the operator.
    fn check_continues(&self, records: &[Record]) -> Result<(), String> {
        let mut last_epoch = self.meta.last_epoch();
        for (k, record) in records.iter().enumerate() {
            let expected = self.last_index() + 1 + k as u64;
            if record.index != expected {
                return Err(format!(
                    "record index {} where {expected} was expected (the journal holds \
                     records 1 to {})",
                    record.index,
                    self.last_index()
                ));
            }
            if let Some(last) = last_epoch
                && record.epoch < last
            {
                return Err(format!(
                    "record {} has epoch {}, older than the epoch {last} before it",
                    record.index, record.epoch
                ));
            }
            if !record.verify() {
                return Err(format!("record {} has a wrong checksum", record.index));
            }
            if record.payload.len() > MAX_PAYLOAD_LEN {
                return Err(format!(
                    "record {} has a payload of {} bytes, above the limit of {MAX_PAYLOAD_LEN}",
                    record.index,
                    record.payload.len()
                ));
            }
            last_epoch = Some(record.epoch);
        }
        Ok(())
    }

    /// Reads every frame from the header on, filling `offsets` and `meta`, and cuts a
    /// torn tail.
    fn scan(&mut self, file_len: u64) -> Result<OpenReport, JournalError> {
        let mut window = Window::new(&self.file, file_len);
        let mut offset = HEADER_LEN;
        let mut damage = None;
        while offset < file_len {
            let index = self.last_index() + 1;
            let (record, len) = match window.frame_at(offset).map_err(self.io_err("read journal"))? {
                Ok(frame) => frame,
                Err(why) => {
                    damage = Some(why);
                    break;
                }
            };
            // A valid frame out of place was written so, not torn: never cut it.
            let misplaced = if record.index != index {
                Some(format!("found record {}", record.index))
            } else {
                self.meta
                    .last_epoch()
                    .filter(|last| record.epoch < *last)
                    .map(|last| format!("epoch {} is older than {last} before it", record.epoch))
            };
            if let Some(detail) = misplaced {
                return Err(self.corrupt(offset, index, detail));
            }
            self.offsets.push(offset);
            self.meta.push(record.epoch, 1);
            offset += len;
        }
        self.end = offset;
        let mut report =
            OpenReport { records: self.last_index(), torn_bytes_cut: 0, torn_records_cut: 0, quarantine_file: None };
        let Some(why) = damage else {
            return Ok(report);
        };
        let index = self.last_index() + 1;
        if let Some((at, record)) = window.find_valid_frame(offset + 1).map_err(self.io_err("read journal"))? {
            let detail = format!(
                "{why}, yet a valid frame (record {}) follows at byte {at}, so this is \
                 damage, not a tail torn by a crash",
                record.index
            );
            return Err(self.corrupt(offset, index, detail));
        }
        report.torn_records_cut = window.frames_begun(offset).map_err(self.io_err("read journal"))?;
        report.torn_bytes_cut = file_len - offset;
        let label = format!("torn-at-{offset}");
        report.quarantine_file = Some(self.quarantine(&label, offset, file_len - offset)?);
        self.file
            .set_len(offset)
            .and_then(|()| self.file.sync_all())
            .map_err(self.io_err("cut the torn tail of journal"))?;
        Ok(report)
    }

    fn corrupt(&self, offset: u64, index: u64, detail: String) -> JournalError {
        JournalError::Corrupt { path: self.path.clone(), offset, index, detail }
    }

    /// Copies `len` bytes of the journal from `from` into a new quarantine file after a
    /// journal header, and makes it durable (file and directory). Returns its path.
    fn quarantine(&self, label: &str, from: u64, len: u64) -> Result<PathBuf, JournalError> {
        let dir = &self.quarantine_dir;
        let qerr = |op: &'static str| {
            let path = dir.clone();
            move |source| JournalError::Io { path, op, source }
        };
        fs::create_dir_all(dir).map_err(qerr("create quarantine directory"))?;
        // The directory may be new: make its entry in the parent durable too.
        sync_dir(parent_dir(dir)).map_err(qerr("fsync the parent directory of"))?;
        let (path, mut file) =
            create_quarantine_file(dir, &self.stem, label).map_err(qerr("create a quarantine file in"))?;
        let copied = (|| {
            let mut src = self.file.try_clone()?;
            src.seek(SeekFrom::Start(from))?;
            file.write_all(&HEADER)?;
            let copied = io::copy(&mut src.take(len), &mut file)?;
            if copied != len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the journal ended early"));
            }
            file.sync_all()?;
            sync_dir(dir)
        })();
        if let Err(source) = copied {
            // Not a usable quarantine: remove it, the journal is left as it was.
            let _ = fs::remove_file(&path);
            return Err(JournalError::Io { path, op: "write quarantine file", source });
        }
        Ok(path)
    }
}

/// The quarantine files of the journal named `stem` in `quarantine_dir` that hold records
/// cut by [`Journal::truncate_quarantine`], oldest first. Torn-tail files and names that do
/// not parse are skipped; a missing directory has none.
pub fn list_quarantine(quarantine_dir: &Path, stem: &str) -> Vec<QuarantineInfo> {
    let mut found: Vec<(u64, QuarantineInfo)> = quarantine_names(quarantine_dir, stem)
        .into_iter()
        .filter_map(|(path, label, seq)| {
            let (range, reason) = label.split_once('.')?;
            let reason = reason_from_name(reason)?;
            let (first, last) = range.split_once('-')?;
            let (first_index, last_index) = (first.parse().ok()?, last.parse().ok()?);
            (first_index >= 1 && last_index >= first_index).then_some((
                seq,
                QuarantineInfo { path, count: last_index - first_index + 1, first_index, last_index, reason },
            ))
        })
        .collect();
    found.sort_by_key(|(seq, _)| *seq);
    found.into_iter().map(|(_, info)| info).collect()
}

/// The records of a quarantine file written by [`Journal::truncate_quarantine`]. Every
/// frame must be valid and the indices consecutive; a torn-tail file is refused with
/// [`JournalError::QuarantineUnreadable`] where its damage begins.
pub fn read_quarantine(path: &Path) -> Result<Vec<Record>, JournalError> {
    let bytes = fs::read(path).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        op: "read quarantine file",
        source,
    })?;
    let unreadable = |offset: usize, detail: String| JournalError::QuarantineUnreadable {
        path: path.to_owned(),
        offset: offset as u64,
        detail,
    };
    if bytes.get(..HEADER.len()) != Some(&HEADER[..]) {
        return Err(unreadable(0, "no journal header".into()));
    }
    let mut records: Vec<Record> = Vec::new();
    let mut pos = HEADER.len();
    while pos < bytes.len() {
        let (record, len) = decode_frame(&bytes[pos..]).map_err(|why| unreadable(pos, why))?;
        if let Some(last) = records.last()
            && record.index != last.index + 1
        {
            let detail = format!("record {} after record {}", record.index, last.index);
            return Err(unreadable(pos, detail));
        }
        records.push(record);
        pos += len;
    }
    Ok(records)
}

const MAGIC: &[u8; 16] = b"takeover journal";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 20;
const HEADER: [u8; HEADER_LEN as usize] = header();

/// `body_len` and `crc32` before each body.
const FRAME_HEADER_LEN: usize = 8;
/// The body without its payload: counter, node, flags, index, checksum.
const BODY_FIXED_LEN: usize = 8 + 2 + 1 + 8 + 4;
const MAX_BODY_LEN: usize = BODY_FIXED_LEN + MAX_PAYLOAD_LEN;
const FLAG_FORCED: u8 = 1;

const fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    let mut i = 0;
    while i < MAGIC.len() {
        h[i] = MAGIC[i];
        i += 1;
    }
    let v = VERSION.to_le_bytes();
    let mut j = 0;
    while j < 4 {
        h[MAGIC.len() + j] = v[j];
        j += 1;
    }
    h
}

fn check_header(file: &File, file_len: u64) -> Result<(), String> {
    if file_len < HEADER_LEN {
        return Err(format!("the file is {file_len} bytes long, shorter than a journal header"));
    }
    let mut found = [0; HEADER_LEN as usize];
    file.read_exact_at(&mut found, 0).map_err(|err| format!("cannot read the header: {err}"))?;
    if found[..MAGIC.len()] != MAGIC[..] {
        return Err("the file does not begin with \"takeover journal\"".into());
    }
    let version = u32::from_le_bytes(found[MAGIC.len()..].try_into().unwrap());
    if version != VERSION {
        return Err(format!("format version {version}, this build reads {VERSION}"));
    }
    Ok(())
}

fn encode_frame(record: &Record, out: &mut Vec<u8>) {
    let body_len = BODY_FIXED_LEN + record.payload.len();
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.extend_from_slice(&record.epoch.counter.to_le_bytes());
    out.extend_from_slice(&record.epoch.node.to_le_bytes());
    out.push(if record.epoch.forced { FLAG_FORCED } else { 0 });
    out.extend_from_slice(&record.index.to_le_bytes());
    out.extend_from_slice(&record.checksum.to_le_bytes());
    out.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The body length a frame header announces, if it is one a valid frame can have.
fn plausible_body_len(frame_header: &[u8]) -> Result<usize, String> {
    let len = u32::from_le_bytes(frame_header[..4].try_into().unwrap()) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&len) {
        return Err(format!("frame length {len} is outside {BODY_FIXED_LEN}..={MAX_BODY_LEN}"));
    }
    Ok(len)
}

/// Decodes and checks the frame at the start of `bytes`; returns the record and the
/// frame's length. The error says what is wrong, for the operator.
fn decode_frame(bytes: &[u8]) -> Result<(Record, usize), String> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(format!("incomplete frame header ({} of {FRAME_HEADER_LEN} bytes)", bytes.len()));
    }
    let body_len = plausible_body_len(bytes)?;
    let frame_len = FRAME_HEADER_LEN + body_len;
    if bytes.len() < frame_len {
        return Err(format!("incomplete frame ({} of {frame_len} bytes)", bytes.len()));
    }
    let stored_crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    let body = &bytes[FRAME_HEADER_LEN..frame_len];
    if crc32fast::hash(body) != stored_crc {
        return Err("frame crc mismatch".into());
    }
    let flags = body[10];
    if flags & !FLAG_FORCED != 0 {
        return Err(format!("unknown frame flags {flags:#04x}"));
    }
    let record = Record {
        epoch: Epoch {
            counter: u64::from_le_bytes(body[0..8].try_into().unwrap()),
            node: u16::from_le_bytes(body[8..10].try_into().unwrap()),
            forced: flags & FLAG_FORCED != 0,
        },
        index: u64::from_le_bytes(body[11..19].try_into().unwrap()),
        checksum: u32::from_le_bytes(body[19..23].try_into().unwrap()),
        payload: body[BODY_FIXED_LEN..].to_vec(),
    };
    if !record.verify() {
        return Err(format!("record {} checksum mismatch", record.index));
    }
    Ok((record, frame_len))
}

fn reason_name(reason: DiscardReason) -> &'static str {
    match reason {
        DiscardReason::Unreplicated => "unreplicated",
        DiscardReason::ForceStart => "force-start",
    }
}

fn reason_from_name(name: &str) -> Option<DiscardReason> {
    [DiscardReason::Unreplicated, DiscardReason::ForceStart].into_iter().find(|r| reason_name(*r) == name)
}

/// Every `<stem>.<label>.<seq>.quarantine` in `dir`, as `(path, label, seq)`.
fn quarantine_names(dir: &Path, stem: &str) -> Vec<(PathBuf, String, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
            let (label, seq) = rest.strip_suffix(".quarantine")?.rsplit_once('.')?;
            Some((entry.path(), label.to_string(), seq.parse().ok()?))
        })
        .collect()
}

/// Creates a new quarantine file with a sequence number above every existing one of this
/// stem, so that no earlier quarantine is ever overwritten and the names sort by age.
fn create_quarantine_file(dir: &Path, stem: &str, label: &str) -> io::Result<(PathBuf, File)> {
    let mut seq = quarantine_names(dir, stem).into_iter().map(|(_, _, seq)| seq + 1).max().unwrap_or(0);
    loop {
        let path = dir.join(format!("{stem}.{label}.{seq}.quarantine"));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => seq += 1,
            Err(err) => return Err(err),
        }
    }
}

/// Reads a file through a buffer at arbitrary offsets, for the scan at open.
struct Window<'a> {
    file: &'a File,
    file_len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    const CHUNK: usize = 1 << 20;

    fn new(file: &'a File, file_len: u64) -> Window<'a> {
        Window { file, file_len, start: 0, buf: Vec::new() }
    }

    /// Up to `n` bytes from `offset` (fewer at the end of the file).
    fn bytes(&mut self, offset: u64, n: usize) -> io::Result<&[u8]> {
        let n = n.min((self.file_len - offset) as usize);
        let buffered = offset >= self.start && offset + n as u64 <= self.start + self.buf.len() as u64;
        if !buffered {
            let len = n.max(Self::CHUNK).min((self.file_len - offset) as usize);
            self.buf.resize(len, 0);
            self.file.read_exact_at(&mut self.buf, offset)?;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        Ok(&self.buf[from..from + n])
    }

    /// The frame at `offset`, or why there is no valid frame there.
    fn frame_at(&mut self, offset: u64) -> io::Result<Result<(Record, u64), String>> {
        let header = self.bytes(offset, FRAME_HEADER_LEN)?;
        let want = match header.len() {
            FRAME_HEADER_LEN => match plausible_body_len(header) {
                Ok(body_len) => FRAME_HEADER_LEN + body_len,
                Err(why) => return Ok(Err(why)),
            },
            _ => FRAME_HEADER_LEN,
        };
        // Checked before reading, so that a damaged length costs no read.
        let remaining = self.file_len - offset;
        if want as u64 > remaining {
            return Ok(Err(format!("incomplete frame ({remaining} of {want} bytes)")));
        }
        let bytes = self.bytes(offset, want)?;
        Ok(decode_frame(bytes).map(|(record, len)| (record, len as u64)))
    }

    /// The first offset at or after `from` holding a valid frame, with its record.
    fn find_valid_frame(&mut self, from: u64) -> io::Result<Option<(u64, Record)>> {
        for offset in from..self.file_len {
            if let Ok((record, _)) = self.frame_at(offset)? {
                return Ok(Some((offset, record)));
            }
        }
        Ok(None)
    }

    /// How many frames begin in the bytes from `from` to the end, following length fields
    /// while they are plausible.
    fn frames_begun(&mut self, from: u64) -> io::Result<u64> {
        let mut count = 0;
        let mut offset = from;
        while offset < self.file_len {
            count += 1;
            let header = self.bytes(offset, FRAME_HEADER_LEN)?;
            let Some(Ok(body_len)) = (header.len() == FRAME_HEADER_LEN).then(|| plausible_body_len(header)) else {
                break;
            };
            offset += (FRAME_HEADER_LEN + body_len) as u64;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn epoch(counter: u64, forced: bool) -> Epoch {
        Epoch { counter, node: 1, forced }
    }

    /// Records `first..first + n` in epoch `counter`, with payloads of varied length.
    fn records(first: u64, n: u64, counter: u64) -> Vec<Record> {
        (first..first + n).map(|i| Record::new(epoch(counter, false), i, vec![i as u8; (i % 7) as usize])).collect()
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture { dir: tempfile::tempdir().unwrap() }
        }
        fn path(&self) -> PathBuf {
            self.dir.path().join("web.journal")
        }
        fn qdir(&self) -> PathBuf {
            self.dir.path().join("quarantine")
        }
        /// Opens the journal. A `Locked` answer is retried for a while: the lock of a
        /// journal this test just closed lives on in any child another test thread forked
        /// meanwhile, until that child execs (its copy of the fd is close-on-exec).
        fn open(&self) -> Result<(Journal, OpenReport), JournalError> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match Journal::open(&self.path(), &self.qdir()) {
                    Err(JournalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    other => return other,
                }
            }
        }
        /// A journal holding `all`, closed, and the offset of each frame.
        fn with(&self, all: &[Record]) -> Vec<u64> {
            let (mut j, _) = self.open().unwrap();
            j.append(all).unwrap();
            j.offsets.clone()
        }
        fn bytes(&self) -> Vec<u8> {
            fs::read(self.path()).unwrap()
        }
        fn quarantine_files(&self) -> Vec<String> {
            let Ok(entries) = fs::read_dir(self.qdir()) else {
                return Vec::new();
            };
            let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names
        }
    }

    fn clean_report(records: u64) -> OpenReport {
        OpenReport { records, torn_bytes_cut: 0, torn_records_cut: 0, quarantine_file: None }
    }

    #[test]
    fn bytes_after_counts_the_frames_of_the_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(&dir.path().join("j.journal"), dir.path()).unwrap();
        let records: Vec<Record> = (1..=3).map(|i| Record::new(epoch(1, false), i, vec![7; 10])).collect();
        journal.append(&records).unwrap();
        let all = journal.bytes_after(0);
        assert!(all > 30, "{all}");
        assert_eq!(journal.bytes_after(3), 0);
        assert_eq!(journal.bytes_after(99), 0);
        assert_eq!(journal.bytes_after(1) * 3, all * 2, "frames of equal payloads are of equal size");
    }

    #[test]
    fn append_then_read_round_trips_records() {
        let f = Fixture::new();
        let (mut j, report) = f.open().unwrap();
        assert_eq!(report, clean_report(0));
        assert_eq!(j.last_index(), 0);
        let mut all = records(1, 3, 1);
        all.push(Record::new(epoch(2, true), 4, b"forced".to_vec()));
        all.push(Record::new(epoch(3, false), 5, vec![0xab; 1000]));
        j.append(&all[..1]).unwrap();
        j.append(&all[1..]).unwrap();
        assert_eq!(j.read(1, 5).unwrap(), all);
        assert_eq!(j.read(2, 4).unwrap(), all[1..4]);
        assert_eq!(*j.meta(), LogMeta::from_records(all.iter().map(|r| (r.epoch, r.index))).unwrap());
        assert_eq!(j.meta().epoch_at(4), Some(epoch(2, true)));
    }

    #[test]
    fn read_clamps_the_range_to_existing_records() {
        let f = Fixture::new();
        let all = records(1, 4, 1);
        f.with(&all);
        let (j, _) = f.open().unwrap();
        assert_eq!(j.read(0, 2).unwrap(), all[..2]);
        assert_eq!(j.read(3, 100).unwrap(), all[2..]);
        assert_eq!(j.read(5, 9).unwrap(), []);
        assert_eq!(j.read(3, 2).unwrap(), []);
    }

    #[test]
    fn read_limited_stops_at_either_limit_but_returns_at_least_one_record() {
        let f = Fixture::new();
        let all: Vec<Record> = (1..=6).map(|i| Record::new(epoch(1, false), i, vec![0; 100])).collect();
        f.with(&all);
        let (j, _) = f.open().unwrap();
        let frame = FRAME_HEADER_LEN + BODY_FIXED_LEN + 100;
        assert_eq!(j.read_limited(1, 4, usize::MAX).unwrap(), all[..4]);
        assert_eq!(j.read_limited(2, 100, 3 * frame).unwrap(), all[1..4]);
        assert_eq!(j.read_limited(2, 100, 3 * frame - 1).unwrap(), all[1..3]);
        assert_eq!(j.read_limited(5, 100, 1).unwrap(), all[4..5]);
        assert_eq!(j.read_limited(6, 100, usize::MAX).unwrap(), all[5..]);
        assert_eq!(j.read_limited(7, 100, usize::MAX).unwrap(), []);
        assert_eq!(j.read_limited(1, 0, usize::MAX).unwrap(), []);
    }

    #[test]
    fn reopen_preserves_records_and_meta() {
        let f = Fixture::new();
        let mut all = records(1, 5, 1);
        all.extend(records(6, 3, 4));
        f.with(&all);
        let (mut j, report) = f.open().unwrap();
        assert_eq!(report, clean_report(8));
        assert_eq!(j.read(1, 8).unwrap(), all);
        assert_eq!(*j.meta(), LogMeta::from_records(all.iter().map(|r| (r.epoch, r.index))).unwrap());
        j.append(&records(9, 1, 4)).unwrap();
        drop(j);
        let (j, report) = f.open().unwrap();
        assert_eq!(report, clean_report(9));
        assert_eq!(j.read(9, 9).unwrap(), records(9, 1, 4));
        assert!(f.quarantine_files().is_empty());
    }

    #[test]
    fn torn_tail_at_every_byte_of_the_last_frame_is_cut_and_quarantined() {
        let f = Fixture::new();
        let all = records(1, 4, 1);
        let offsets = f.with(&all);
        let good = f.bytes();
        let last_start = offsets[3] as usize;
        for len in last_start + 1..good.len() {
            fs::write(f.path(), &good[..len]).unwrap();
            let _ = fs::remove_dir_all(f.qdir());
            let (mut j, report) = f.open().unwrap();
            assert_eq!(report.records, 3, "cut at {len}");
            assert_eq!(report.torn_bytes_cut, (len - last_start) as u64);
            assert_eq!(report.torn_records_cut, 1);
            // The cut bytes were kept, verbatim, behind a journal header.
            let kept = fs::read(report.quarantine_file.unwrap()).unwrap();
            assert_eq!(kept[..HEADER.len()], HEADER);
            assert_eq!(kept[HEADER.len()..], good[last_start..len]);
            assert_eq!(f.bytes(), good[..last_start]);
            assert_eq!(j.read(1, 10).unwrap(), all[..3]);
            // The journal goes on where the valid records end.
            j.append(&all[3..]).unwrap();
            drop(j);
            assert_eq!(f.bytes(), good);
        }
    }

    #[test]
    fn torn_batch_of_several_frames_is_cut_and_counted_frame_by_frame() {
        let f = Fixture::new();
        let all = records(1, 5, 1);
        let offsets = f.with(&all);
        let good = f.bytes();
        // The batch 3..=5 was not fsynced when the node crashed: the bodies of 3 and 4
        // did not reach the disk (zeros) and 5 is short.
        let mut torn = good[..good.len() - 2].to_vec();
        for frame in [2, 3] {
            let body = offsets[frame] as usize + FRAME_HEADER_LEN;
            torn[body..offsets[frame + 1] as usize].fill(0);
        }
        fs::write(f.path(), &torn).unwrap();
        let (j, report) = f.open().unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(report.torn_records_cut, 3);
        assert_eq!(report.torn_bytes_cut, torn.len() as u64 - offsets[2]);
        assert_eq!(j.read(1, 5).unwrap(), all[..2]);
    }

    #[test]
    fn damage_followed_by_a_valid_frame_is_refused_even_in_the_last_batch() {
        // The same crash as above but with record 5 whole: a valid frame after damage is
        // never cut, whatever its cause might have been; the operator decides.
        let f = Fixture::new();
        let offsets = f.with(&records(1, 5, 1));
        let mut bad = f.bytes();
        let body = offsets[2] as usize + FRAME_HEADER_LEN;
        bad[body..offsets[4] as usize].fill(0);
        fs::write(f.path(), &bad).unwrap();
        assert!(matches!(f.open(), Err(JournalError::Corrupt { index: 3, .. })));
        assert_eq!(f.bytes(), bad);
    }

    #[test]
    fn garbage_after_the_last_frame_is_cut_as_torn_tail() {
        let f = Fixture::new();
        let all = records(1, 3, 1);
        f.with(&all);
        let good = f.bytes();
        let patterns: [&[u8]; 5] = [
            &[0; 1],
            &[0; 4096],
            &[0xff; 100],
            b"not a frame at all",
            &[40, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ];
        for garbage in patterns {
            let mut bytes = good.clone();
            bytes.extend_from_slice(garbage);
            fs::write(f.path(), &bytes).unwrap();
            let (j, report) = f.open().unwrap();
            assert_eq!(report.records, 3);
            assert_eq!(report.torn_bytes_cut, garbage.len() as u64);
            assert_eq!(report.torn_records_cut, 1, "{garbage:?}");
            let kept = fs::read(report.quarantine_file.unwrap()).unwrap();
            assert_eq!(kept[HEADER.len()..], *garbage);
            assert_eq!(j.read(1, 3).unwrap(), all);
            drop(j);
            assert_eq!(f.bytes(), good);
        }
        // Every cut tail got its own quarantine file.
        assert_eq!(f.quarantine_files().len(), patterns.len());
    }

    #[test]
    fn corrupt_middle_frame_is_refused_and_nothing_is_cut() {
        let f = Fixture::new();
        let all = records(1, 3, 1);
        let offsets = f.with(&all);
        let good = f.bytes();
        let (start, end) = (offsets[1] as usize, offsets[2] as usize);
        for i in start..end {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= mask;
                fs::write(f.path(), &bad).unwrap();
                match f.open() {
                    Err(JournalError::Corrupt { offset, index, .. }) => {
                        assert_eq!((offset, index), (start as u64, 2), "byte {i} ^ {mask:#x}");
                    }
                    other => panic!("byte {i} ^ {mask:#x}: expected Corrupt, got {other:?}"),
                }
                assert_eq!(f.bytes(), bad, "the file is left for the operator");
            }
        }
        assert!(f.quarantine_files().is_empty());
    }

    #[test]
    fn corrupt_error_says_where_and_what_to_do() {
        let f = Fixture::new();
        let offsets = f.with(&records(1, 3, 1));
        let mut bad = f.bytes();
        bad[offsets[1] as usize + 12] ^= 1;
        fs::write(f.path(), &bad).unwrap();
        let message = f.open().unwrap_err().to_string();
        assert!(message.contains(&f.path().display().to_string()), "{message}");
        assert!(message.contains(&format!("byte {}", offsets[1])), "{message}");
        assert!(message.contains("record 2"), "{message}");
        assert!(message.contains("--join-only"), "{message}");
    }

    #[test]
    fn valid_frame_out_of_sequence_is_refused() {
        let f = Fixture::new();
        let all = records(1, 3, 1);
        let offsets = f.with(&all);
        let good = f.bytes();
        // Record 3 twice: a valid frame where record 4 should be.
        let mut dup = good.clone();
        dup.extend_from_slice(&good[offsets[2] as usize..]);
        fs::write(f.path(), &dup).unwrap();
        assert!(matches!(f.open(), Err(JournalError::Corrupt { index: 4, .. })));
        // An epoch going backwards.
        let mut back = good.clone();
        encode_frame(&Record::new(epoch(0, false), 4, vec![]), &mut back);
        fs::write(f.path(), &back).unwrap();
        assert!(matches!(f.open(), Err(JournalError::Corrupt { index: 4, .. })));
    }

    #[test]
    fn bad_header_is_refused_not_recreated() {
        let f = Fixture::new();
        f.with(&records(1, 2, 1));
        let good = f.bytes();
        let mut other_version = good.clone();
        other_version[16] = 2;
        let cases = [
            good[..HEADER.len() - 1].to_vec(),
            Vec::new(),
            b"something else entirely, not a journal".to_vec(),
            other_version,
        ];
        for bad in cases {
            fs::write(f.path(), &bad).unwrap();
            assert!(matches!(f.open(), Err(JournalError::BadHeader { .. })));
            assert_eq!(f.bytes(), bad);
        }
    }

    #[test]
    fn second_open_of_the_same_journal_is_refused_while_the_first_is_open() {
        let f = Fixture::new();
        let (j, _) = f.open().unwrap();
        assert!(matches!(Journal::open(&f.path(), &f.qdir()), Err(JournalError::Locked { .. })));
        drop(j);
        f.open().unwrap();
    }

    #[test]
    fn non_consecutive_or_invalid_append_is_refused_and_writes_nothing() {
        let f = Fixture::new();
        let (mut j, _) = f.open().unwrap();
        j.append(&records(1, 2, 5)).unwrap();
        let before = f.bytes();
        let mut bad_checksum = records(3, 1, 5);
        bad_checksum[0].payload.push(1);
        let mut gap = records(3, 3, 5);
        gap.remove(1);
        let cases = [
            records(4, 1, 5),
            records(2, 1, 5),
            records(1, 3, 5),
            gap,
            records(3, 1, 4),
            bad_checksum,
            vec![Record::new(epoch(5, false), 3, vec![0; MAX_PAYLOAD_LEN + 1])],
        ];
        for case in cases {
            assert!(matches!(j.append(&case), Err(JournalError::Rejected { .. })));
            assert_eq!(f.bytes(), before);
            assert_eq!(j.last_index(), 2);
        }
        j.append(&records(3, 1, 5)).unwrap();
        j.append(&[]).unwrap();
        assert_eq!(j.last_index(), 3);
    }

    #[test]
    fn truncate_quarantine_keeps_the_prefix_and_quarantines_exactly_the_cut_records() {
        let f = Fixture::new();
        let mut all = records(1, 4, 1);
        all.extend(records(5, 4, 2));
        let offsets = f.with(&all);
        let (mut j, _) = f.open().unwrap();
        let info = j.truncate_quarantine(3, DiscardReason::Unreplicated).unwrap().unwrap();
        assert_eq!(
            (info.first_index, info.last_index, info.count, info.reason),
            (4, 8, 5, DiscardReason::Unreplicated)
        );
        assert_eq!(read_quarantine(&info.path).unwrap(), all[3..]);
        assert_eq!(j.read(1, 100).unwrap(), all[..3]);
        assert_eq!(j.last_index(), 3);
        assert_eq!(*j.meta(), LogMeta::from_records(all[..3].iter().map(|r| (r.epoch, r.index))).unwrap());
        assert_eq!(fs::metadata(f.path()).unwrap().len(), offsets[3]);
        // Nothing after the cut: nothing to do, no file.
        assert_eq!(j.truncate_quarantine(3, DiscardReason::ForceStart).unwrap(), None);
        assert_eq!(j.truncate_quarantine(9, DiscardReason::ForceStart).unwrap(), None);
        // The log goes on after the cut, in a new epoch, and survives a reopen.
        j.append(&records(4, 2, 3)).unwrap();
        drop(j);
        let (j, report) = f.open().unwrap();
        assert_eq!(report, clean_report(5));
        let mut expected = all[..3].to_vec();
        expected.extend(records(4, 2, 3));
        assert_eq!(j.read(1, 5).unwrap(), expected);
    }

    #[test]
    fn truncate_that_cannot_quarantine_cuts_nothing() {
        let f = Fixture::new();
        let all = records(1, 3, 1);
        f.with(&all);
        let before = f.bytes();
        // The quarantine directory cannot be created: a file stands in its place.
        fs::write(f.qdir(), b"in the way").unwrap();
        let (mut j, _) = f.open().unwrap();
        assert!(matches!(j.truncate_quarantine(1, DiscardReason::ForceStart), Err(JournalError::Io { .. })));
        assert_eq!(f.bytes(), before);
        assert_eq!(j.read(1, 3).unwrap(), all);
        // Nothing was written to the journal, so it stays usable.
        j.append(&records(4, 1, 1)).unwrap();
    }

    #[test]
    fn torn_tail_that_cannot_be_quarantined_is_not_cut() {
        let f = Fixture::new();
        f.with(&records(1, 3, 1));
        let mut torn = f.bytes();
        torn.truncate(torn.len() - 1);
        fs::write(f.path(), &torn).unwrap();
        fs::write(f.qdir(), b"in the way").unwrap();
        assert!(matches!(f.open(), Err(JournalError::Io { .. })));
        assert_eq!(f.bytes(), torn);
    }

    #[test]
    fn quarantine_files_never_overwrite_each_other_and_list_back() {
        let f = Fixture::new();
        let (mut j, _) = f.open().unwrap();
        j.append(&records(1, 3, 1)).unwrap();
        let first = j.truncate_quarantine(2, DiscardReason::Unreplicated).unwrap().unwrap();
        // The same range again, and a cut to nothing.
        j.append(&records(3, 1, 2)).unwrap();
        let second = j.truncate_quarantine(2, DiscardReason::Unreplicated).unwrap().unwrap();
        let third = j.truncate_quarantine(0, DiscardReason::ForceStart).unwrap().unwrap();
        assert_ne!(first.path, second.path);
        assert_eq!(read_quarantine(&first.path).unwrap(), records(3, 1, 1));
        assert_eq!(read_quarantine(&second.path).unwrap(), records(3, 1, 2));
        drop(j);
        // A torn tail and an unrelated journal's file sit in the same directory.
        let mut bytes = f.bytes();
        bytes.push(7);
        fs::write(f.path(), bytes).unwrap();
        let (_, report) = f.open().unwrap();
        let torn = report.quarantine_file.unwrap();
        let other = f.qdir().join("web.other.1-2.unreplicated.0.quarantine");
        fs::write(&other, HEADER).unwrap();
        assert_eq!(
            f.quarantine_files(),
            [
                "web.3-3.unreplicated.0.quarantine",
                "web.3-3.unreplicated.1.quarantine",
                "web.1-2.force-start.2.quarantine",
                "web.other.1-2.unreplicated.0.quarantine",
                "web.torn-at-20.3.quarantine",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        assert!(torn.ends_with("web.torn-at-20.3.quarantine"));
        assert!(matches!(read_quarantine(&torn), Err(JournalError::QuarantineUnreadable { offset: 20, .. })));
        assert_eq!(list_quarantine(&f.qdir(), "web"), [first, second, third]);
        assert_eq!(list_quarantine(&f.qdir(), "web.other").len(), 1);
        assert_eq!(list_quarantine(&f.dir.path().join("absent"), "web"), []);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Append records with these payload lengths; `new_epoch` starts a new epoch first,
        /// forced if `forced`.
        Append {
            lens: Vec<usize>,
            new_epoch: bool,
            forced: bool,
        },
        /// Keep this fraction (in 1/256) of the records.
        Truncate {
            keep: u8,
            force_start: bool,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (proptest::collection::vec(0usize..300, 0..6), any::<bool>(), any::<bool>())
                .prop_map(|(lens, new_epoch, forced)| Op::Append { lens, new_epoch, forced }),
            2 => (any::<u8>(), any::<bool>())
                .prop_map(|(keep, force_start)| Op::Truncate { keep, force_start }),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_append_truncate_reopen_keeps_the_journal_equal_to_a_vec(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let f = Fixture::new();
            let (mut j, _) = f.open().unwrap();
            let mut model: Vec<Record> = Vec::new();
            let mut current = epoch(1, false);
            for op in ops {
                match op {
                    Op::Append { lens, new_epoch, forced } => {
                        if new_epoch {
                            current = epoch(current.counter + 1, forced);
                        }
                        let first = model.len() as u64 + 1;
                        let batch: Vec<Record> = lens
                            .iter()
                            .zip(first..)
                            .map(|(&len, index)| {
                                let payload = (0..len).map(|b| (b as u64 ^ index) as u8).collect();
                                Record::new(current, index, payload)
                            })
                            .collect();
                        j.append(&batch).unwrap();
                        model.extend(batch);
                    }
                    Op::Truncate { keep, force_start } => {
                        let keep_upto = model.len() as u64 * keep as u64 / 256;
                        let reason = if force_start {
                            DiscardReason::ForceStart
                        } else {
                            DiscardReason::Unreplicated
                        };
                        let info = j.truncate_quarantine(keep_upto, reason).unwrap();
                        let cut = model.split_off(keep_upto as usize);
                        match info {
                            None => prop_assert!(cut.is_empty()),
                            Some(info) => {
                                prop_assert_eq!(info.count, cut.len() as u64);
                                prop_assert_eq!(info.reason, reason);
                                prop_assert_eq!(read_quarantine(&info.path).unwrap(), cut);
                            }
                        }
                    }
                    Op::Reopen => {
                        drop(j);
                        let (reopened, report) = f.open().unwrap();
                        prop_assert_eq!(report, clean_report(model.len() as u64));
                        j = reopened;
                    }
                }
                prop_assert_eq!(j.last_index(), model.len() as u64);
                prop_assert_eq!(j.read(1, u64::MAX).unwrap(), model.clone());
                let expected_meta = LogMeta::from_records(model.iter().map(|r| (r.epoch, r.index)));
                prop_assert_eq!(Some(j.meta().clone()), expected_meta);
            }
            // Every cut is listed back, in order.
            let listed = list_quarantine(&f.qdir(), "web");
            prop_assert_eq!(listed.len(), f.quarantine_files().len());
        }
    }
}
