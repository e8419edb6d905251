//! Exclusive ownership of a shared block device or image file (F2.2), recorded on the
//! device itself so that anyone reading the disk sees who owns it.
//!
//! # Where the reservation lives
//!
//! The **last 4 KiB-aligned 4 KiB** of the device (offset [`reservation_offset`]: the
//! device size rounded down to a multiple of 4096, minus 4096) is reserved for takeover.
//! Anything at the start of the device, typically a filesystem, is undisturbed, provided it
//! ends at or before that offset: make the filesystem with an explicit size, e.g.
//! `mkfs.ext4 DEVICE $((OFFSET / 1024))k`. [`Resource::check`] verifies that an ext2/3/4
//! or XFS filesystem found at the start ends before the reserved area (other filesystems
//! and partition tables are not inspected; keep them below the offset too).
//!
//! # The record (version 1)
//!
//! The first 512 bytes of the area (one sector, which devices write atomically) hold the
//! record; the other 3584 bytes are written as zeros and ignored when read. Integers are
//! little-endian.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0   | 8   | magic `TKOVRRSV` |
//! | 8   | 2   | version, 1 |
//! | 10  | 1   | state: 1 held, 2 released |
//! | 11  | 1   | flags: bit 0 = the generation is forced ([`Epoch::forced`]) |
//! | 12  | 4   | zero |
//! | 16  | 8   | sequence number, raised by one on every write |
//! | 24  | 8   | generation counter ([`Epoch::counter`]) |
//! | 32  | 2   | generation node ([`Epoch::node`]) |
//! | 34  | 2   | owner node index |
//! | 36  | 8   | written at, Unix seconds (for people only; never compared) |
//! | 44  | 1   | owner node name length (≤ 128) |
//! | 45  | 1   | group name length (≤ 128) |
//! | 46  | 2   | zero |
//! | 48  | 128 | owner node name, UTF-8, zero padded |
//! | 176 | 128 | group name, UTF-8, zero padded |
//! | 304 | 204 | zero |
//! | 508 | 4   | CRC-32 (IEEE) of bytes 0..508 |
//!
//! An area of all zeros has never been reserved and is free. Anything else that is not a
//! valid record (no magic: [`DiskError::Foreign`]; bad CRC, version or fields:
//! [`DiskError::Corrupt`]) is never treated as free: every operation fails loudly until a
//! person has looked and rewritten it with [`initialize_reservation`].
//!
//! Reads and writes use `O_DIRECT` (so two paths to one disk, or two hosts, never see a
//! stale page cache) and writes `O_DSYNC` plus `fdatasync`. A regular image file on a
//! filesystem without `O_DIRECT` support falls back to buffered I/O, which is coherent on
//! one host.
//!
//! # The rules
//!
//! The fencing token is the group's generation ([`Ctx::generation`]). The core starts a
//! resource only after it has made its new generation durable and the previous owner is
//! known stopped (it released the group, or it was fenced), so:
//!
//! - **start** takes a free or released device, or one this node already holds, and takes
//!   over one held by another node of the group at a *lower* generation. A device held at
//!   an equal or higher generation by another node, or by this node at a higher one, or
//!   released at a higher one, is refused: this node's generation is stale. After writing
//!   it reads the record back and fails if it is not exactly what it wrote.
//! - **stop** writes "released" if this node holds it at its generation (or an older
//!   one), and otherwise has nothing to release (ok, logged).
//! - **monitor** is `Ok` while this node holds it at the current generation (a record of
//!   an older generation of this node is renewed to the current one: the group's epoch
//!   rises while it stays active, on every entry to SM), `Failed` once another node or a
//!   newer generation holds it (how a stale active node notices it was taken over), and
//!   `NotRunning` when free or released.
//!
//! The read-then-write of start is not an atomic compare-and-swap on the device: the
//! mutual exclusion comes from the core's fencing and generations, and the record makes
//! the owner visible and lets a stale node find out. SCSI-3 persistent reservations, which
//! the device would arbitrate itself, are only detected (in `check`), not used.
//!
//! Operations run their I/O on tokio's blocking pool, one at a time per resource: an
//! operation whose future is dropped finishes its single write before the next operation
//! of the same resource starts, so a cancelled start can never land after a later stop.

use super::{Ctx, OpFuture, OpOutcome, PlanCheck, Resource};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use takeover_core::Epoch;
use tokio::sync::Mutex;
use tracing::{info, warn};

/// Exclusive ownership of a shared block device or image file (F2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The device as this node sees it (e.g. /dev/disk/by-id/..., /dev/loop3).
    pub device: std::path::PathBuf,
}

/// Size of the reserved area at the end of the device.
pub const RESERVATION_SIZE: u64 = 4096;
/// Size of the record at the start of the reserved area.
pub const RECORD_SIZE: usize = 512;
/// The record's first eight bytes.
pub const MAGIC: [u8; 8] = *b"TKOVRRSV";
/// The record format this code writes and reads.
pub const VERSION: u16 = 1;
/// The smallest device that can hold a reservation (the area plus one more 4 KiB block).
pub const MIN_DEVICE_SIZE: u64 = 2 * RESERVATION_SIZE;
/// The longest node or group name the record holds, in bytes.
pub const NAME_MAX: usize = 128;

const OFF_VERSION: usize = 8;
const OFF_STATE: usize = 10;
const OFF_FLAGS: usize = 11;
const OFF_SEQUENCE: usize = 16;
const OFF_GEN_COUNTER: usize = 24;
const OFF_GEN_NODE: usize = 32;
const OFF_NODE_INDEX: usize = 34;
const OFF_WRITTEN_AT: usize = 36;
const OFF_NODE_LEN: usize = 44;
const OFF_GROUP_LEN: usize = 45;
const OFF_NODE: usize = 48;
const OFF_GROUP: usize = 176;
const OFF_CRC: usize = 508;
const FLAG_FORCED: u8 = 1;
const STATE_HELD: u8 = 1;
const STATE_RELEASED: u8 = 2;

/// How long `check` waits for `sg_persist` before giving up on it.
const SG_PERSIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the reservation area of a device of `size` bytes starts, or `None` when the
/// device is smaller than [`MIN_DEVICE_SIZE`]. Everything before it is free for a
/// filesystem; the filesystem must end at or before this offset.
pub fn reservation_offset(size: u64) -> Option<u64> {
    let aligned = size & !(RESERVATION_SIZE - 1);
    if aligned < MIN_DEVICE_SIZE { None } else { Some(aligned - RESERVATION_SIZE) }
}

/// Whether a record says the device is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    Held,
    Released,
}

/// Who holds (or last held) the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub node_index: u16,
    pub group: String,
    /// The group's generation (fencing token) the owner wrote it in.
    pub generation: Epoch,
}

impl Owner {
    /// This node, for this group, at the context's generation.
    pub fn from_ctx(ctx: &Ctx) -> Owner {
        Owner {
            node: ctx.node.clone(),
            node_index: ctx.node_index,
            group: ctx.group.clone(),
            generation: ctx.generation,
        }
    }

    /// The same node of the same group (whatever the generation).
    fn same_holder(&self, other: &Owner) -> bool {
        self.node == other.node && self.node_index == other.node_index && self.group == other.group
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} (index {}) for group {} at generation {}",
            self.node, self.node_index, self.group, self.generation
        )
    }
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub state: ReservationState,
    /// The holder, or when released the last holder.
    pub owner: Owner,
    pub sequence: u64,
    /// Unix seconds, as the writer's clock said; for people only.
    pub written_at: u64,
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            ReservationState::Held => write!(f, "held by {}", self.owner)?,
            ReservationState::Released => write!(f, "released by {}", self.owner)?,
        }
        write!(f, " (write #{}, at unix time {})", self.sequence, self.written_at)
    }
}

/// What can go wrong reading or writing a reservation.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is neither a block device nor a regular file")]
    NotADevice { path: PathBuf },
    #[error("{path} is too small for a reservation: {size} bytes, at least {MIN_DEVICE_SIZE} needed")]
    TooSmall { path: PathBuf, size: u64 },
    #[error(
        "{path}: the reservation block at offset {offset} is corrupt ({detail}); it is not treated as free: \
         find out who uses the device, then rewrite the block (initialize_reservation)"
    )]
    Corrupt { path: PathBuf, offset: u64, detail: String },
    #[error(
        "{path}: the reservation area at offset {offset} holds other data, not a takeover reservation \
         (a filesystem or partition reaching the end of the device?); it is not treated as free: make sure \
         nothing uses the last 4 KiB, then initialize it (initialize_reservation)"
    )]
    Foreign { path: PathBuf, offset: u64 },
    #[error("{path}: not initializing the reservation: it is {reservation}")]
    Held { path: PathBuf, reservation: String },
    #[error("{what} `{name}` is {len} bytes long; a reservation records at most {NAME_MAX}")]
    NameTooLong { what: &'static str, name: String, len: usize },
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| DiskError::Io { path, what, source }
}

/// Encodes a record into its 512 bytes.
pub fn encode(r: &Reservation) -> Result<[u8; RECORD_SIZE], DiskError> {
    for (what, name) in [("node name", &r.owner.node), ("group name", &r.owner.group)] {
        if name.len() > NAME_MAX {
            return Err(DiskError::NameTooLong { what, name: name.clone(), len: name.len() });
        }
    }
    let mut b = [0u8; RECORD_SIZE];
    b[..8].copy_from_slice(&MAGIC);
    b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
    b[OFF_STATE] = match r.state {
        ReservationState::Held => STATE_HELD,
        ReservationState::Released => STATE_RELEASED,
    };
    b[OFF_FLAGS] = if r.owner.generation.forced { FLAG_FORCED } else { 0 };
    b[OFF_SEQUENCE..OFF_SEQUENCE + 8].copy_from_slice(&r.sequence.to_le_bytes());
    b[OFF_GEN_COUNTER..OFF_GEN_COUNTER + 8].copy_from_slice(&r.owner.generation.counter.to_le_bytes());
    b[OFF_GEN_NODE..OFF_GEN_NODE + 2].copy_from_slice(&r.owner.generation.node.to_le_bytes());
    b[OFF_NODE_INDEX..OFF_NODE_INDEX + 2].copy_from_slice(&r.owner.node_index.to_le_bytes());
    b[OFF_WRITTEN_AT..OFF_WRITTEN_AT + 8].copy_from_slice(&r.written_at.to_le_bytes());
    b[OFF_NODE_LEN] = r.owner.node.len() as u8;
    b[OFF_GROUP_LEN] = r.owner.group.len() as u8;
    b[OFF_NODE..OFF_NODE + r.owner.node.len()].copy_from_slice(r.owner.node.as_bytes());
    b[OFF_GROUP..OFF_GROUP + r.owner.group.len()].copy_from_slice(r.owner.group.as_bytes());
    let crc = crc32fast::hash(&b[..OFF_CRC]);
    b[OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

/// Why a block is not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No magic: some other data.
    Foreign,
    /// The magic is there but the rest is not right.
    Corrupt(String),
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the reservation area (at least its first 512 bytes): `Ok(None)` when they are
/// all zero (never reserved).
pub fn decode(area: &[u8]) -> Result<Option<Reservation>, DecodeError> {
    let b = &area[..RECORD_SIZE];
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if b[..8] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    let stored = le_u32(b, OFF_CRC);
    let actual = crc32fast::hash(&b[..OFF_CRC]);
    if stored != actual {
        return Err(DecodeError::Corrupt(format!(
            "crc mismatch: the block says {stored:08x}, its content gives {actual:08x}"
        )));
    }
    let version = le_u16(b, OFF_VERSION);
    if version != VERSION {
        return Err(DecodeError::Corrupt(format!("version {version}; this takeover reads version {VERSION}")));
    }
    let state = match b[OFF_STATE] {
        STATE_HELD => ReservationState::Held,
        STATE_RELEASED => ReservationState::Released,
        other => return Err(DecodeError::Corrupt(format!("unknown state {other}"))),
    };
    let name = |off: usize, len_at: usize, what: &str| -> Result<String, DecodeError> {
        let len = b[len_at] as usize;
        if len > NAME_MAX {
            return Err(DecodeError::Corrupt(format!("{what} length {len} exceeds {NAME_MAX}")));
        }
        String::from_utf8(b[off..off + len].to_vec()).map_err(|_| DecodeError::Corrupt(format!("{what} is not UTF-8")))
    };
    let node = name(OFF_NODE, OFF_NODE_LEN, "node name")?;
    let group = name(OFF_GROUP, OFF_GROUP_LEN, "group name")?;
    Ok(Some(Reservation {
        state,
        owner: Owner {
            node,
            node_index: le_u16(b, OFF_NODE_INDEX),
            group,
            generation: Epoch {
                counter: le_u64(b, OFF_GEN_COUNTER),
                node: le_u16(b, OFF_GEN_NODE),
                forced: b[OFF_FLAGS] & FLAG_FORCED != 0,
            },
        },
        sequence: le_u64(b, OFF_SEQUENCE),
        written_at: le_u64(b, OFF_WRITTEN_AT),
    }))
}

/// A 4 KiB buffer aligned to 4 KiB, as `O_DIRECT` needs, without unsafe code. Also the
/// storage fence's block (crate::storage_fence).
pub(crate) struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    pub(crate) fn new() -> AlignedBlock {
        let size = RESERVATION_SIZE as usize;
        let storage = vec![0u8; 2 * size];
        let start = storage.as_ptr().align_offset(size);
        assert!(start < size, "cannot align a buffer");
        AlignedBlock { storage, start }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + RESERVATION_SIZE as usize]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + RESERVATION_SIZE as usize]
    }
}

/// An open device (or image file) and where its reservation area is.
pub(crate) struct Device {
    path: PathBuf,
    file: File,
    /// Whether `file` was opened with `O_DIRECT`.
    direct: bool,
    writable: bool,
    is_block: bool,
    size: u64,
    offset: u64,
}

impl Device {
    pub(crate) fn open(path: &Path, write: bool) -> Result<Device, DiskError> {
        let meta = std::fs::metadata(path).map_err(io_err(path, "stat it"))?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(DiskError::NotADevice { path: path.to_path_buf() });
        }
        let open = |direct: bool| {
            let mut flags = 0;
            if direct {
                flags |= libc::O_DIRECT;
            }
            if write {
                flags |= libc::O_DSYNC;
            }
            OpenOptions::new().read(true).write(write).custom_flags(flags).open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            // Some filesystems (e.g. older tmpfs) refuse O_DIRECT for image files.
            Err(e) if !is_block && e.raw_os_error() == Some(libc::EINVAL) => {
                (open(false).map_err(io_err(path, "open it"))?, false)
            }
            Err(e) => return Err(io_err(path, if write { "open it for writing" } else { "open it" })(e)),
        };
        let size = (&file).seek(SeekFrom::End(0)).map_err(io_err(path, "find its size"))?;
        let offset = reservation_offset(size).ok_or_else(|| DiskError::TooSmall { path: path.to_path_buf(), size })?;
        Ok(Device { path: path.to_path_buf(), file, direct, writable: write, is_block, size, offset })
    }

    /// Drops `O_DIRECT` for an image file whose filesystem accepted the flag at open but
    /// refuses it on I/O.
    fn reopen_buffered(&mut self) -> Result<(), DiskError> {
        let flags = if self.writable { libc::O_DSYNC } else { 0 };
        self.file = OpenOptions::new()
            .read(true)
            .write(self.writable)
            .custom_flags(flags)
            .open(&self.path)
            .map_err(io_err(&self.path, "reopen it without O_DIRECT"))?;
        self.direct = false;
        Ok(())
    }

    pub(crate) fn read_block(&mut self, offset: u64) -> Result<AlignedBlock, DiskError> {
        let mut block = AlignedBlock::new();
        match self.file.read_exact_at(block.bytes_mut(), offset) {
            Ok(()) => Ok(block),
            Err(e) if self.direct && !self.is_block && e.raw_os_error() == Some(libc::EINVAL) => {
                self.reopen_buffered()?;
                self.file.read_exact_at(block.bytes_mut(), offset).map_err(io_err(&self.path, "read it"))?;
                Ok(block)
            }
            Err(e) => Err(io_err(&self.path, format!("read {RESERVATION_SIZE} bytes at offset {offset}"))(e)),
        }
    }

    fn read(&mut self) -> Result<Option<Reservation>, DiskError> {
        let offset = self.offset;
        let block = self.read_block(offset)?;
        decode(block.bytes()).map_err(|e| match e {
            DecodeError::Foreign => DiskError::Foreign { path: self.path.clone(), offset },
            DecodeError::Corrupt(detail) => DiskError::Corrupt { path: self.path.clone(), offset, detail },
        })
    }

    /// Writes the whole area (the record, then zeros) and makes it durable.
    fn write(&mut self, r: &Reservation) -> Result<(), DiskError> {
        let record = encode(r)?;
        let mut block = AlignedBlock::new();
        block.bytes_mut()[..RECORD_SIZE].copy_from_slice(&record);
        self.write_area(&block)
    }

    fn write_area(&mut self, block: &AlignedBlock) -> Result<(), DiskError> {
        self.write_block(self.offset, block)
    }

    /// Writes one 4 KiB block at `offset` (a multiple of 4096) and makes it durable.
    pub(crate) fn write_block(&mut self, offset: u64, block: &AlignedBlock) -> Result<(), DiskError> {
        let what = format!("write 4 KiB at offset {offset}");
        match self.file.write_all_at(block.bytes(), offset) {
            Ok(()) => {}
            Err(e) if self.direct && !self.is_block && e.raw_os_error() == Some(libc::EINVAL) => {
                self.reopen_buffered()?;
                self.file.write_all_at(block.bytes(), offset).map_err(io_err(&self.path, &what))?;
            }
            Err(e) => return Err(io_err(&self.path, what)(e)),
        }
        self.file.sync_data().map_err(io_err(&self.path, "flush it (fdatasync)"))
    }

    /// The device's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Writes `r` and reads it back: a different result means someone else wrote at the
    /// same time (or the device lies).
    fn write_verified(&mut self, r: &Reservation) -> Result<(), String> {
        self.write(r).map_err(|e| e.to_string())?;
        match self.read() {
            Ok(Some(back)) if back == *r => Ok(()),
            Ok(back) => Err(format!(
                "{}: wrote a reservation {r} but it reads back as {}: another node wrote it at the same time?",
                self.path.display(),
                back.map_or("free".to_string(), |b| b.to_string())
            )),
            Err(e) => Err(format!("{}: wrote a reservation but cannot read it back: {e}", self.path.display())),
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads the reservation record of a device (or image file): `None` if it was never
/// reserved. Corrupt or foreign data is an error, never "free".
pub fn read_reservation(device: &Path) -> Result<Option<Reservation>, DiskError> {
    Device::open(device, false)?.read()
}

/// Who holds the device now, as anyone reading the disk sees it: `None` when it is free
/// (never reserved, or released).
pub fn read_owner(device: &Path) -> Result<Option<Owner>, DiskError> {
    Ok(read_reservation(device)?.filter(|r| r.state == ReservationState::Held).map(|r| r.owner))
}

/// For an administrator: clears the reservation area (all zeros: never reserved, free),
/// whatever it holds (corrupt or foreign data, or a released record). Refuses a valid
/// record that is held: release it first, or decide who owns the disk.
pub fn initialize_reservation(device: &Path) -> Result<(), DiskError> {
    let mut dev = Device::open(device, true)?;
    match dev.read() {
        Ok(Some(r)) if r.state == ReservationState::Held => {
            return Err(DiskError::Held { path: device.to_path_buf(), reservation: r.to_string() });
        }
        Ok(_) | Err(DiskError::Corrupt { .. }) | Err(DiskError::Foreign { .. }) => {}
        Err(e) => return Err(e),
    }
    dev.write_area(&AlignedBlock::new())
}

/// What start should do with the record it found.
#[derive(Debug, PartialEq, Eq)]
enum Acquire {
    /// Already held by this node at exactly this generation: nothing to write.
    AlreadyHeld,
    /// Write "held by me".
    Take,
    /// Write "held by me", taking it over from a stale holder (logged).
    TakeOver(Owner),
    Refuse(String),
}

fn acquire_decision(current: Option<&Reservation>, me: &Owner) -> Acquire {
    let Some(r) = current else { return Acquire::Take };
    let theirs = &r.owner;
    match r.state {
        ReservationState::Released if theirs.group == me.group && theirs.generation > me.generation => {
            Acquire::Refuse(format!(
                "it was released by {theirs}, a newer generation than this node's {}: this node is stale",
                me.generation
            ))
        }
        ReservationState::Released => Acquire::Take,
        ReservationState::Held if theirs.same_holder(me) => {
            if theirs.generation == me.generation {
                Acquire::AlreadyHeld
            } else if theirs.generation < me.generation {
                Acquire::Take
            } else {
                Acquire::Refuse(format!(
                    "this node holds it at generation {}, newer than the {} it was asked to start in: \
                     this request is stale",
                    theirs.generation, me.generation
                ))
            }
        }
        ReservationState::Held if theirs.group != me.group => Acquire::Refuse(format!(
            "it is held by {theirs}: a device belongs to one group only (generations of different groups \
             cannot be compared)"
        )),
        ReservationState::Held if theirs.generation < me.generation => Acquire::TakeOver(theirs.clone()),
        ReservationState::Held => Acquire::Refuse(format!(
            "it is held by {theirs}, a generation not older than this node's {}: a newer generation owns it, \
             this node is stale",
            me.generation
        )),
    }
}

/// The blocking part of start.
fn acquire(path: &Path, me: &Owner) -> Result<String, String> {
    let mut dev = Device::open(path, true).map_err(|e| e.to_string())?;
    let current = dev.read().map_err(|e| e.to_string())?;
    let decision = acquire_decision(current.as_ref(), me);
    let takeover = match decision {
        Acquire::AlreadyHeld => return Ok(format!("{}: already held by this node", path.display())),
        Acquire::Refuse(why) => return Err(format!("{}: cannot take the device: {why}", path.display())),
        Acquire::Take => None,
        Acquire::TakeOver(prev) => Some(prev),
    };
    if let Some(prev) = &takeover {
        warn!(
            device = %path.display(),
            "taking the device over from {prev}: the core made generation {} durable and knows that node stopped",
            me.generation
        );
    }
    let record = Reservation {
        state: ReservationState::Held,
        owner: me.clone(),
        sequence: current.map_or(1, |r| r.sequence.wrapping_add(1)),
        written_at: now_unix(),
    };
    dev.write_verified(&record)?;
    Ok(match takeover {
        Some(prev) => format!("{}: taken over from {prev}", path.display()),
        None => format!("{}: reserved by this node at generation {}", path.display(), me.generation),
    })
}

/// The blocking part of stop.
fn release(path: &Path, me: &Owner) -> Result<String, String> {
    let mut dev = Device::open(path, true).map_err(|e| e.to_string())?;
    let current = dev.read().map_err(|e| e.to_string())?;
    let Some(r) = current else { return Ok(format!("{}: free, nothing to release", path.display())) };
    if r.state == ReservationState::Released {
        return Ok(format!("{}: already released", path.display()));
    }
    if !r.owner.same_holder(me) || r.owner.generation > me.generation {
        let note = format!("{}: held by {}, not by this node: nothing to release", path.display(), r.owner);
        warn!("{note}");
        return Ok(note);
    }
    let record = Reservation {
        state: ReservationState::Released,
        owner: me.clone(),
        sequence: r.sequence.wrapping_add(1),
        written_at: now_unix(),
    };
    dev.write_verified(&record)?;
    Ok(format!("{}: released", path.display()))
}

/// The blocking part of monitor.
fn watch(path: &Path, me: &Owner) -> OpOutcome {
    let current = match read_reservation(path) {
        Ok(c) => c,
        Err(e) => return OpOutcome::Failed(e.to_string()),
    };
    let Some(r) = current else { return OpOutcome::NotRunning };
    if r.state == ReservationState::Released {
        return OpOutcome::NotRunning;
    }
    let theirs = &r.owner;
    if !theirs.same_holder(me) || theirs.generation > me.generation {
        return OpOutcome::Failed(format!(
            "{}: now held by {theirs}; this node (generation {}) is stale and must stop using the device",
            path.display(),
            me.generation
        ));
    }
    if theirs.generation < me.generation {
        // The group's epoch rose while this node stayed active: renew the token so the
        // record shows (and later starts compare against) the current generation.
        match renew(path, me, &r) {
            Ok(()) => info!(device = %path.display(), "reservation renewed to generation {}", me.generation),
            Err(e) => {
                warn!(device = %path.display(), "cannot renew the reservation to generation {}: {e}", me.generation)
            }
        }
    }
    OpOutcome::Ok
}

fn renew(path: &Path, me: &Owner, seen: &Reservation) -> Result<(), String> {
    let mut dev = Device::open(path, true).map_err(|e| e.to_string())?;
    // Read again under this open: only renew exactly what was seen.
    match dev.read() {
        Ok(Some(now)) if now == *seen => {}
        Ok(other) => {
            return Err(format!("the record changed meanwhile: {}", other.map_or("free".into(), |r| r.to_string())));
        }
        Err(e) => return Err(e.to_string()),
    }
    dev.write_verified(&Reservation {
        state: ReservationState::Held,
        owner: me.clone(),
        sequence: seen.sequence.wrapping_add(1),
        written_at: now_unix(),
    })
}

/// What an ext2/3/4 or XFS superblock at the start of the device says about the
/// filesystem's size, in bytes: `(type, size)`.
fn filesystem_extent(start: &[u8]) -> Option<(&'static str, u64)> {
    // ext2/3/4: the superblock is at byte 1024, its magic 0xEF53 at +0x38.
    let sb = &start[1024..2048];
    if le_u16(sb, 0x38) == 0xEF53 {
        let log = le_u32(sb, 0x18);
        if log > 16 {
            return None;
        }
        let block = 1024u64 << log;
        let mut blocks = u64::from(le_u32(sb, 0x04));
        let incompat = le_u32(sb, 0x60);
        if incompat & 0x80 != 0 {
            blocks |= u64::from(le_u32(sb, 0x150)) << 32;
        }
        return Some(("ext2/3/4", blocks.saturating_mul(block)));
    }
    // XFS: "XFSB", then the block size and the data block count, big-endian.
    if &start[..4] == b"XFSB" {
        let block = u64::from(u32::from_be_bytes(start[4..8].try_into().ok()?));
        let blocks = u64::from_be_bytes(start[8..16].try_into().ok()?);
        return Some(("xfs", blocks.saturating_mul(block)));
    }
    None
}

/// The blocking part of check: everything but the SCSI probe.
fn inspect(spec: &Path, me: &Owner) -> PlanCheck {
    let mut notes = Vec::new();
    let mut ok = true;
    let real = match std::fs::canonicalize(spec) {
        Ok(real) => real,
        Err(e) => {
            return PlanCheck { ok: false, notes: vec![format!("device {}: {e}", spec.display())] };
        }
    };
    if real != spec {
        notes.push(format!("device {} resolves to {}", spec.display(), real.display()));
    }
    // Opened read-only (closing a block device opened for writing makes udev probe it
    // again); writability is asked of access(2).
    let mut dev = match Device::open(&real, false) {
        Ok(d) => d,
        Err(e) => return PlanCheck { ok: false, notes: [notes, vec![e.to_string()]].concat() },
    };
    if let Err(e) = nix::unistd::access(&real, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK) {
        ok = false;
        notes.push(format!("{} is not readable and writable by this agent: {e}", real.display()));
    }
    notes.push(format!(
        "{} {}: {} bytes, reservation area at offset {} (the last 4 KiB){}",
        if dev.is_block { "block device" } else { "image file" },
        real.display(),
        dev.size,
        dev.offset,
        if dev.direct { "" } else { ", buffered I/O (O_DIRECT not supported here)" }
    ));
    match dev.read() {
        Ok(None) => notes.push("never reserved: free".into()),
        Ok(Some(r)) => {
            let mine = r.owner.same_holder(me);
            notes.push(format!("{r}{}", if mine { " (this node)" } else { "" }));
            if r.state == ReservationState::Held
                && (r.owner.group != me.group || (!mine && r.owner.generation >= me.generation))
            {
                notes.push(format!(
                    "a start at generation {} would be refused unless the group's generation rises",
                    me.generation
                ));
            }
        }
        Err(e) => {
            ok = false;
            notes.push(e.to_string());
        }
    }
    match dev.read_block(0) {
        Ok(start) => match filesystem_extent(start.bytes()) {
            Some((fs, end)) if end > dev.offset => {
                ok = false;
                notes.push(format!(
                    "the {fs} filesystem at the start spans {end} bytes, into the reservation area at offset {}: \
                     remake it at most that size (e.g. mkfs.ext4 {} {}k) or shrink it",
                    dev.offset,
                    real.display(),
                    dev.offset / 1024
                ));
            }
            Some((fs, end)) => notes.push(format!("{fs} filesystem of {end} bytes ends before the reservation area")),
            None => notes.push(format!(
                "no ext2/3/4 or xfs filesystem at the start (anything else there must end before offset {})",
                dev.offset
            )),
        },
        Err(e) => {
            ok = false;
            notes.push(e.to_string());
        }
    }
    PlanCheck { ok, notes }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether the device answers SCSI-3 PERSISTENT RESERVE IN (sg_persist, from sg3-utils).
async fn probe_scsi_pr(device: &Path) -> String {
    let Some(tool) = find_in_path("sg_persist") else {
        return "SCSI-3 persistent reservations not probed: sg_persist (sg3-utils) is not installed".into();
    };
    let child = tokio::process::Command::new(tool)
        .args(["--in", "--read-keys"])
        .arg(device)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(SG_PERSIST_TIMEOUT, child).await {
        Err(_) => format!("no SCSI-3 persistent reservations: sg_persist did not answer in {SG_PERSIST_TIMEOUT:?}"),
        Ok(Err(e)) => format!("SCSI-3 persistent reservations not probed: cannot run sg_persist: {e}"),
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            format!(
                "the device supports SCSI-3 persistent reservations ({}); takeover uses its on-disk reservation, \
                 not PR",
                text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
            )
        }
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stderr);
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message");
            format!("no SCSI-3 persistent reservations (sg_persist: {first})")
        }
    }
}

/// Runs `f` on the blocking pool while holding `lock`: operations of one resource never
/// overlap, even when a dropped operation's I/O is still finishing.
async fn serialized<T: Send + 'static>(
    lock: &Arc<Mutex<()>>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let guard = lock.clone().lock_owned().await;
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        f()
    })
    .await
    .map_err(|e| format!("the disk operation did not finish: {e}"))
}

pub struct Disk {
    spec: DiskSpec,
    lock: Arc<Mutex<()>>,
}

impl Disk {
    pub fn new(spec: DiskSpec) -> Self {
        Disk { spec, lock: Arc::new(Mutex::new(())) }
    }

    pub fn spec(&self) -> &DiskSpec {
        &self.spec
    }
}

fn outcome(result: Result<Result<String, String>, String>, op: &str) -> OpOutcome {
    match result {
        Ok(Ok(note)) => {
            info!("disk {op}: {note}");
            OpOutcome::Ok
        }
        Ok(Err(e)) | Err(e) => OpOutcome::Failed(e),
    }
}

impl Resource for Disk {
    fn start<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            let (path, me) = (self.spec.device.clone(), Owner::from_ctx(ctx));
            outcome(serialized(&self.lock, move || acquire(&path, &me)).await, "start")
        })
    }

    fn stop<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            let (path, me) = (self.spec.device.clone(), Owner::from_ctx(ctx));
            outcome(serialized(&self.lock, move || release(&path, &me)).await, "stop")
        })
    }

    fn monitor<'a>(&'a mut self, ctx: &'a Ctx) -> OpFuture<'a> {
        Box::pin(async move {
            let (path, me) = (self.spec.device.clone(), Owner::from_ctx(ctx));
            serialized(&self.lock, move || watch(&path, &me)).await.unwrap_or_else(OpOutcome::Failed)
        })
    }

    fn check<'a>(&'a mut self, ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = PlanCheck> + Send + 'a>> {
        Box::pin(async move {
            let (path, me) = (self.spec.device.clone(), Owner::from_ctx(ctx));
            let mut check = match serialized(&self.lock, move || inspect(&path, &me)).await {
                Ok(check) => check,
                Err(e) => return PlanCheck { ok: false, notes: vec![e] },
            };
            if check.ok {
                let is_block = std::fs::metadata(&self.spec.device).is_ok_and(|m| m.file_type().is_block_device());
                if is_block {
                    check.notes.push(probe_scsi_pr(&self.spec.device).await);
                } else {
                    check.notes.push("an image file: no SCSI-3 persistent reservations".into());
                }
            }
            for name in [("node name", &ctx.node), ("group name", &ctx.group)] {
                if name.1.len() > NAME_MAX {
                    check.ok = false;
                    check.notes.push(format!("{} `{}` is longer than {NAME_MAX} bytes", name.0, name.1));
                }
            }
            check
        })
    }
}

#[cfg(test)]
pub(crate) mod testloop {
    //! Loop devices and mounts for the tests of `disk` and `mount`, cleaned up on drop.

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Mutex;
    use std::time::Duration;

    pub(crate) use crate::service::testutil::root_or_skip;

    /// Runs a command, panicking with its output if it fails.
    pub fn run(argv: &[&str]) -> String {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(
            out.status.success(),
            "{argv:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// losetup calls of this test binary, one at a time (`-f` races with itself).
    static LOSETUP: Mutex<()> = Mutex::new(());

    /// A loop device attached to a file; detached on drop.
    pub struct LoopDev {
        pub dev: PathBuf,
    }

    impl LoopDev {
        pub fn attach(file: &Path) -> LoopDev {
            let _one = LOSETUP.lock().unwrap_or_else(|e| e.into_inner());
            let mut last = String::new();
            for _ in 0..10 {
                let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().expect("run losetup");
                if out.status.success() {
                    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    return LoopDev { dev: PathBuf::from(dev) };
                }
                last = String::from_utf8_lossy(&out.stderr).into_owned();
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("losetup -f --show {}: {last}", file.display());
        }

        pub fn path(&self) -> &Path {
            &self.dev
        }
    }

    impl Drop for LoopDev {
        fn drop(&mut self) {
            let _one = LOSETUP.lock().unwrap_or_else(|e| e.into_inner());
            let status = Command::new("losetup").arg("-d").arg(&self.dev).status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("warning: losetup -d {} failed: {status:?}", self.dev.display());
            }
        }
    }

    /// Unmounts whatever is mounted on a path, on drop (plainly; lazily as a last resort,
    /// so a failed test never leaves a mount behind).
    pub struct MountGuard(pub PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            use nix::mount::{MntFlags, umount2};
            for _ in 0..20 {
                match umount2(&self.0, MntFlags::empty()) {
                    Ok(()) => continue,
                    Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
                    Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => {
                        eprintln!("warning: umount {}: {e}", self.0.display());
                        return;
                    }
                }
            }
            eprintln!("warning: {} stays busy; detaching it lazily", self.0.display());
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    /// A sparse image file of `size` bytes in `dir`.
    pub fn image(dir: &Path, size: u64) -> PathBuf {
        let path = dir.join("shared.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        path
    }
}

#[cfg(test)]
mod tests {
    use super::testloop::*;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ctx(node: &str, index: u16, counter: u64, gen_node: u16) -> Ctx {
        Ctx {
            node: node.into(),
            scope: node.into(),
            node_index: index,
            group: "web".into(),
            resource: "data".into(),
            state_dir: std::env::temp_dir(),
            generation: Epoch { counter, node: gen_node, forced: false },
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn failed(o: OpOutcome) -> String {
        match o {
            OpOutcome::Failed(text) => text,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(reservation_offset(0), None);
        assert_eq!(reservation_offset(8191), None);
        assert_eq!(reservation_offset(8192), Some(4096));
        assert_eq!(reservation_offset(64 * MIB), Some(64 * MIB - 4096));
        // A device whose size is not a multiple of 4 KiB: the last aligned 4 KiB.
        assert_eq!(reservation_offset(64 * MIB + 512), Some(64 * MIB - 4096));
    }

    #[test]
    fn record_roundtrip_and_damage() {
        let r = Reservation {
            state: ReservationState::Held,
            owner: Owner {
                node: "alpha".into(),
                node_index: 3,
                group: "web".into(),
                generation: Epoch { counter: 42, node: 1, forced: true },
            },
            sequence: 7,
            written_at: 1_700_000_000,
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(&bytes[..8], b"TKOVRRSV");
        assert_eq!(decode(&bytes), Ok(Some(r.clone())));
        assert_eq!(decode(&[0u8; RECORD_SIZE]), Ok(None));
        // Any single flipped bit is caught.
        for i in 8..RECORD_SIZE {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(matches!(decode(&bad), Err(DecodeError::Corrupt(_))), "byte {i}");
        }
        let mut foreign = bytes;
        foreign[0] = b'x';
        assert_eq!(decode(&foreign), Err(DecodeError::Foreign));
        let long = Reservation { owner: Owner { node: "n".repeat(129), ..r.owner.clone() }, ..r };
        assert!(matches!(encode(&long), Err(DiskError::NameTooLong { .. })));
    }

    #[test]
    fn decisions() {
        let me = Owner::from_ctx(&ctx("a", 0, 5, 0));
        let rec = |state, node: &str, index, counter, group: &str| Reservation {
            state,
            owner: Owner {
                node: node.into(),
                node_index: index,
                group: group.into(),
                generation: Epoch { counter, node: index, forced: false },
            },
            sequence: 1,
            written_at: 0,
        };
        use Acquire::*;
        use ReservationState::*;
        assert_eq!(acquire_decision(None, &me), Take);
        assert_eq!(acquire_decision(Some(&rec(Released, "b", 1, 4, "web")), &me), Take);
        assert!(matches!(acquire_decision(Some(&rec(Released, "b", 1, 6, "web")), &me), Refuse(_)));
        assert_eq!(acquire_decision(Some(&rec(Released, "b", 1, 9, "db")), &me), Take);
        assert_eq!(acquire_decision(Some(&rec(Held, "a", 0, 5, "web")), &me), AlreadyHeld);
        assert_eq!(acquire_decision(Some(&rec(Held, "a", 0, 3, "web")), &me), Take);
        assert!(matches!(acquire_decision(Some(&rec(Held, "a", 0, 6, "web")), &me), Refuse(_)));
        assert!(matches!(acquire_decision(Some(&rec(Held, "b", 1, 4, "web")), &me), TakeOver(_)));
        // Equal counter, but node 1 > node 0: the other node's epoch is newer.
        assert!(matches!(acquire_decision(Some(&rec(Held, "b", 1, 5, "web")), &me), Refuse(_)));
        assert!(matches!(acquire_decision(Some(&rec(Held, "b", 1, 9, "web")), &me), Refuse(_)));
        assert!(matches!(acquire_decision(Some(&rec(Held, "b", 1, 1, "db")), &me), Refuse(_)));
        // A forced epoch of the same counter and node is newer than the unforced one.
        let forced = Owner { generation: Epoch { forced: true, ..me.generation }, ..me.clone() };
        let held_unforced = Reservation { state: Held, owner: me.clone(), sequence: 1, written_at: 0 };
        assert_eq!(acquire_decision(Some(&held_unforced), &forced), Take);
    }

    /// The whole life cycle through two paths to one disk, as two nodes see it.
    fn two_node_story(path_a: &Path, path_b: &Path) {
        let rt = rt();
        let mut a = Disk::new(DiskSpec { device: path_a.into() });
        let mut b = Disk::new(DiskSpec { device: path_b.into() });
        let a5 = ctx("a", 0, 5, 0);

        assert_eq!(read_owner(path_b).unwrap(), None);
        assert_eq!(rt.block_on(a.monitor(&a5)), OpOutcome::NotRunning);
        assert_eq!(rt.block_on(a.start(&a5)), OpOutcome::Ok);
        assert_eq!(rt.block_on(a.start(&a5)), OpOutcome::Ok, "start is idempotent");
        assert_eq!(rt.block_on(a.monitor(&a5)), OpOutcome::Ok);
        // The owner is visible to anyone reading the disk, through the other path.
        let owner = read_owner(path_b).unwrap().expect("held");
        assert_eq!(owner, Owner::from_ctx(&a5));
        assert_eq!(read_owner(path_a).unwrap(), Some(owner));

        // B, at a lower or equal generation, is refused.
        let text = failed(rt.block_on(b.start(&ctx("b", 1, 4, 1))));
        assert!(text.contains("held by node a (index 0) for group web at generation 5.0"), "{text}");
        assert!(text.contains("stale"), "{text}");
        let text = failed(rt.block_on(b.start(&ctx("b", 1, 5, 0))));
        assert!(text.contains("not older"), "{text}");
        assert_eq!(read_owner(path_b).unwrap().unwrap().node, "a");
        // B's monitor: someone else holds it.
        assert!(matches!(rt.block_on(b.monitor(&ctx("b", 1, 4, 1))), OpOutcome::Failed(_)));

        // A is known stopped (fenced); the core made generation 6.1 durable: B takes it.
        let b6 = ctx("b", 1, 6, 1);
        assert_eq!(rt.block_on(b.start(&b6)), OpOutcome::Ok);
        assert_eq!(rt.block_on(b.monitor(&b6)), OpOutcome::Ok);
        assert_eq!(read_owner(path_a).unwrap(), Some(Owner::from_ctx(&b6)));

        // A (a stale active, came back) notices it was taken over.
        let text = failed(rt.block_on(a.monitor(&a5)));
        assert!(text.contains("now held by node b (index 1) for group web at generation 6.1"), "{text}");
        assert!(text.contains("stale"), "{text}");
        // Its start is refused, its stop releases nothing.
        assert!(matches!(rt.block_on(a.start(&a5)), OpOutcome::Failed(_)));
        assert_eq!(rt.block_on(a.stop(&a5)), OpOutcome::Ok);
        assert_eq!(read_owner(path_a).unwrap().unwrap().node, "b");

        // B releases it (twice: stop is idempotent); A re-acquires it in a newer generation.
        assert_eq!(rt.block_on(b.stop(&b6)), OpOutcome::Ok);
        assert_eq!(rt.block_on(b.stop(&b6)), OpOutcome::Ok);
        assert_eq!(read_owner(path_a).unwrap(), None);
        let released = read_reservation(path_a).unwrap().unwrap();
        assert_eq!(released.state, ReservationState::Released);
        assert_eq!(released.owner, Owner::from_ctx(&b6));
        assert_eq!(rt.block_on(b.monitor(&b6)), OpOutcome::NotRunning);
        // A stale A (generation 5) may not take it even released: generation 6 existed.
        assert!(failed(rt.block_on(a.start(&a5))).contains("released by node b"));
        let a7 = ctx("a", 0, 7, 0);
        assert_eq!(rt.block_on(a.start(&a7)), OpOutcome::Ok);
        assert_eq!(read_owner(path_b).unwrap(), Some(Owner::from_ctx(&a7)));

        // The epoch rises while A stays active: monitor renews the record.
        let a8 = ctx("a", 0, 8, 0);
        assert_eq!(rt.block_on(a.monitor(&a8)), OpOutcome::Ok);
        assert_eq!(read_owner(path_b).unwrap(), Some(Owner::from_ctx(&a8)));
        let seq = read_reservation(path_b).unwrap().unwrap().sequence;
        assert_eq!(rt.block_on(a.stop(&a8)), OpOutcome::Ok);
        assert_eq!(read_reservation(path_b).unwrap().unwrap().sequence, seq + 1);
    }

    /// Flips one bit of the record through `writer`; everything through `reader` fails.
    fn corruption_story(writer: &Path, reader: &Path) {
        let rt = rt();
        let a5 = ctx("a", 0, 5, 0);
        let mut a = Disk::new(DiskSpec { device: reader.into() });
        assert_eq!(rt.block_on(a.start(&a5)), OpOutcome::Ok);
        let offset = Device::open(writer, false).unwrap().offset;
        {
            let mut dev = Device::open(writer, true).unwrap();
            let mut block = dev.read_block(offset).unwrap();
            block.bytes_mut()[OFF_NODE] ^= 0x01; // "a" becomes "`"
            dev.file.write_all_at(block.bytes(), offset).unwrap();
            dev.file.sync_data().unwrap();
        }
        let err = read_owner(reader).unwrap_err();
        assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("crc mismatch") && text.contains("not treated as free"), "{text}");
        // Never free: start (even at a newer generation), monitor and stop all fail.
        let b9 = ctx("b", 1, 9, 1);
        let mut b = Disk::new(DiskSpec { device: writer.into() });
        assert!(failed(rt.block_on(b.start(&b9))).contains("crc mismatch"));
        assert!(failed(rt.block_on(a.monitor(&a5))).contains("crc mismatch"));
        assert!(failed(rt.block_on(a.stop(&a5))).contains("crc mismatch"));
        let check = rt.block_on(b.check(&b9));
        assert!(!check.ok, "{check:?}");
        // An administrator rewrites it; then it can be taken.
        initialize_reservation(writer).unwrap();
        assert_eq!(read_owner(reader).unwrap(), None);
        assert_eq!(rt.block_on(b.start(&b9)), OpOutcome::Ok);
        assert!(initialize_reservation(writer).is_err(), "a held record is not overwritten");

        // Foreign data (no magic) is refused the same way.
        {
            let dev = Device::open(writer, true).unwrap();
            let mut block = AlignedBlock::new();
            block.bytes_mut().fill(0xAB);
            dev.file.write_all_at(block.bytes(), offset).unwrap();
            dev.file.sync_data().unwrap();
        }
        let text = failed(rt.block_on(a.start(&ctx("a", 0, 10, 0))));
        assert!(text.contains("holds other data"), "{text}");
    }

    #[test]
    fn image_file_two_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), MIB);
        two_node_story(&img, &img);
    }

    #[test]
    fn image_file_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), MIB);
        corruption_story(&img, &img);
    }

    #[test]
    fn image_file_check() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), MIB);
        let rt = rt();
        let mut d = Disk::new(DiskSpec { device: img.clone() });
        let check = rt.block_on(d.check(&ctx("a", 0, 1, 0)));
        assert!(check.ok, "{check:?}");
        let all = check.notes.join("\n");
        assert!(all.contains("image file") && all.contains("never reserved: free"), "{all}");
        assert!(all.contains(&format!("offset {}", MIB - 4096)), "{all}");

        let small = dir.path().join("small.img");
        std::fs::File::create(&small).unwrap().set_len(4096).unwrap();
        let mut d = Disk::new(DiskSpec { device: small });
        let check = rt.block_on(d.check(&ctx("a", 0, 1, 0)));
        assert!(!check.ok && check.notes.join(" ").contains("too small"), "{check:?}");
        assert!(failed(rt.block_on(d.start(&ctx("a", 0, 1, 0)))).contains("too small"));

        let mut d = Disk::new(DiskSpec { device: dir.path().into() });
        assert!(failed(rt.block_on(d.start(&ctx("a", 0, 1, 0)))).contains("neither a block device"));
        let mut d = Disk::new(DiskSpec { device: dir.path().join("missing") });
        assert!(!rt.block_on(d.check(&ctx("a", 0, 1, 0))).ok);
    }

    /// A dropped start still finishes its write before the next operation begins.
    #[test]
    fn cancelled_start_lands_before_stop() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), MIB);
        let rt = rt();
        let mut d = Disk::new(DiskSpec { device: img.clone() });
        let c = ctx("a", 0, 1, 0);
        rt.block_on(async {
            // Poll the start once (it hands its I/O to the blocking pool), then drop it.
            let mut start = d.start(&c);
            let _ = futures_poll_once(&mut start).await;
            drop(start);
            assert_eq!(d.stop(&c).await, OpOutcome::Ok);
        });
        let r = read_reservation(&img).unwrap();
        // Either the start never ran, or it ran and the stop released after it.
        assert!(r.as_ref().is_none_or(|r| r.state == ReservationState::Released), "{r:?}");
    }

    async fn futures_poll_once(f: &mut OpFuture<'_>) -> Option<OpOutcome> {
        std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(o) => std::task::Poll::Ready(Some(o)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    #[test]
    fn loop_devices_two_nodes() {
        if !root_or_skip("loop_devices_two_nodes") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 64 * MIB);
        let la = LoopDev::attach(&img);
        let lb = LoopDev::attach(&img);
        assert_ne!(la.path(), lb.path());
        two_node_story(la.path(), lb.path());
    }

    #[test]
    fn loop_devices_corruption() {
        if !root_or_skip("loop_devices_corruption") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 64 * MIB);
        let la = LoopDev::attach(&img);
        let lb = LoopDev::attach(&img);
        corruption_story(lb.path(), la.path());
    }

    #[test]
    fn loop_device_check_sees_filesystem_and_owner() {
        if !root_or_skip("loop_device_check_sees_filesystem_and_owner") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 64 * MIB);
        let la = LoopDev::attach(&img);
        let lb = LoopDev::attach(&img);
        let rt = rt();
        let a1 = ctx("a", 0, 1, 0);
        let offset = reservation_offset(64 * MIB).unwrap();
        let a_dev = la.path().to_str().unwrap();

        // A filesystem over the whole device reaches into the reservation area.
        run(&["mkfs.ext4", "-q", "-F", a_dev]);
        let mut d = Disk::new(DiskSpec { device: lb.path().into() });
        let check = rt.block_on(d.check(&a1));
        let all = check.notes.join("\n");
        assert!(!check.ok && all.contains("into the reservation area"), "{all}");

        // Made to end before it: fine, and the filesystem survives reservations.
        run(&["mkfs.ext4", "-q", "-F", a_dev, &format!("{}k", offset / 1024)]);
        // mkfs leaves the old ext4's backup superblocks alone, but the area is ours to
        // write: clear whatever the full-size filesystem left there.
        initialize_reservation(la.path()).unwrap();
        let check = rt.block_on(d.check(&a1));
        let all = check.notes.join("\n");
        assert!(check.ok, "{all}");
        assert!(all.contains("ends before the reservation area"), "{all}");
        assert!(all.contains("no SCSI-3 persistent reservations"), "{all}");
        assert!(all.contains("never reserved: free"), "{all}");
        let mut a = Disk::new(DiskSpec { device: la.path().into() });
        assert_eq!(rt.block_on(a.start(&a1)), OpOutcome::Ok);
        let check = rt.block_on(d.check(&ctx("b", 1, 1, 1)));
        assert!(check.notes.join("\n").contains("held by node a"), "{check:?}");
        run(&["e2fsck", "-f", "-n", a_dev]);

        // Through a symlink, as /dev/disk/by-id would be.
        let link = dir.path().join("by-id-shared");
        std::os::unix::fs::symlink(lb.path(), &link).unwrap();
        let mut l = Disk::new(DiskSpec { device: link.clone() });
        let check = rt.block_on(l.check(&a1));
        assert!(check.notes[0].contains(&format!("resolves to {}", lb.path().display())), "{check:?}");
    }
}
