//! Storage-based fencing: a poison-pill slot per node on a shared device, as SBD does
//! (issue 6, part 1), for clusters without a power switch.
//!
//! # On the device
//!
//! A small shared block device (or image file) dedicated to this, in 4 KiB blocks:
//! block 0 holds the header, block `1 + i` the slot of the `i`-th `[[node]]`. Each record
//! is the first 512 bytes of its block (one sector, written atomically), little-endian,
//! with a CRC-32 of bytes 0..508 at 508. Reads and writes use `O_DIRECT` (`O_DSYNC` and
//! `fdatasync` for writes), like the disk resource, so two paths to one disk never see a
//! stale page cache.
//!
//! | header | | slot | |
//! |---|---|---|---|
//! | 0 magic `TKOVRSBD` | 8 | 0 magic `TKOVSLOT` | 8 |
//! | 8 version 1 | 2 | 8 version 1 | 2 |
//! | 10 slots | 2 | 10 state: 0 clear, 1 poison | 1 |
//! | 12 cluster name length | 1 | 16 sequence (raised on every write) | 8 |
//! | 16 cluster name | 64 | 24 target node index, 26 sender node index | 2 + 2 |
//! | | | 28 target name length, 29 sender name length | 1 + 1 |
//! | | | 32 target name, 96 sender name | 64 + 64 |
//!
//! `takeover storage-fence init` writes the header and clear slots; an agent refuses to
//! start on a device without them (or of another cluster).
//!
//! # The rules
//!
//! - **The watched node**: its guard process (not the agent, which may be the thing that
//!   is paused) reads its slot every `timeout / 4`. A poison message, or no successful
//!   read for `timeout`, makes the guard act at once: it kills the agent and every
//!   process of the node's cgroups and removes its virtual IPs (see [`crate::guard`]).
//! - **The fencing node** writes the poison to the target's slot, reads it back, then
//!   waits `msgwait` (at least twice `timeout`, checked by `config check`) before the
//!   fence counts as confirmed: by then the target has read the poison or has been
//!   unable to read for `timeout`, and has stopped either way. Before writing, it reads
//!   its own slot: a node that has itself been poisoned does not fence anyone (it is
//!   about to stop). That settles fence races: the active fences at once, the standby
//!   `fence_delay` later (at least a heartbeat interval, checked), so it finds the
//!   active's poison in its own slot and stands down. If a slow write still lets both
//!   poison each other, both stop: an outage, never two actives.
//! - **A starting agent** that finds a poison in its own slot reports who sent it and
//!   clears it: the fenced run is gone (its guard killed it, and a starting agent kills
//!   what a previous run left before anything else).

use std::path::Path;
use std::time::Duration;

use crate::resources::disk::{AlignedBlock, Device};

const BLOCK: u64 = 4096;
const HEADER_MAGIC: &[u8; 8] = b"TKOVRSBD";
const SLOT_MAGIC: &[u8; 8] = b"TKOVSLOT";
const VERSION: u16 = 1;
const NAME_MAX: usize = 64;
const OFF_CRC: usize = 508;

/// What a slot says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub poison: bool,
    pub sequence: u64,
    pub target: String,
    pub sender: String,
}

impl Slot {
    fn clear(target: &str, sequence: u64) -> Slot {
        Slot { poison: false, sequence, target: target.to_string(), sender: String::new() }
    }
}

fn name_bytes(name: &str, what: &str) -> Result<Vec<u8>, String> {
    if name.len() > NAME_MAX {
        return Err(format!("{what} `{name}` is {} bytes; the storage fence records at most {NAME_MAX}", name.len()));
    }
    Ok(name.as_bytes().to_vec())
}

fn seal(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..OFF_CRC]);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

fn checked(b: &[u8], magic: &[u8; 8], what: &str) -> Result<(), String> {
    if &b[..8] != magic {
        return Err(if b[..512].iter().all(|it| *it == 0) {
            format!("the {what} is empty: the device is not initialised; run `takeover storage-fence init`")
        } else {
            format!(
                "the {what} holds something else (no {} magic): is this the right device?",
                String::from_utf8_lossy(magic)
            )
        });
    }
    let crc = u32::from_le_bytes(b[OFF_CRC..OFF_CRC + 4].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[..OFF_CRC]) {
        return Err(format!("the {what} is corrupt (bad checksum)"));
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(format!("the {what} has version {version}; this takeover reads version {VERSION}"));
    }
    Ok(())
}

fn text(b: &[u8], len_at: usize, at: usize) -> String {
    let len = usize::from(b[len_at]).min(NAME_MAX);
    String::from_utf8_lossy(&b[at..at + len]).into_owned()
}

fn encode_slot(slot: &Slot, target_index: u16, sender_index: u16) -> Result<AlignedBlock, String> {
    let mut block = AlignedBlock::new();
    let b = block.bytes_mut();
    b[..8].copy_from_slice(SLOT_MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10] = u8::from(slot.poison);
    b[16..24].copy_from_slice(&slot.sequence.to_le_bytes());
    b[24..26].copy_from_slice(&target_index.to_le_bytes());
    b[26..28].copy_from_slice(&sender_index.to_le_bytes());
    let target = name_bytes(&slot.target, "node name")?;
    let sender = name_bytes(&slot.sender, "node name")?;
    b[28] = target.len() as u8;
    b[29] = sender.len() as u8;
    b[32..32 + target.len()].copy_from_slice(&target);
    b[96..96 + sender.len()].copy_from_slice(&sender);
    seal(b);
    Ok(block)
}

fn decode_slot(b: &[u8]) -> Result<Slot, String> {
    checked(b, SLOT_MAGIC, "slot")?;
    Ok(Slot {
        poison: b[10] == 1,
        sequence: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        target: text(b, 28, 32),
        sender: text(b, 29, 96),
    })
}

fn open(path: &Path, write: bool) -> Result<Device, String> {
    Device::open(path, write).map_err(|e| e.to_string())
}

fn slot_offset(index: u16) -> u64 {
    BLOCK * (1 + u64::from(index))
}

/// Writes the header for `nodes` (in `[[node]]` order) and a clear slot for each.
pub fn init(path: &Path, cluster: &str, nodes: &[String]) -> Result<(), String> {
    let mut dev = open(path, true)?;
    let needed = BLOCK * (1 + nodes.len() as u64);
    if dev.size() < needed {
        return Err(format!(
            "{}: {} bytes is too small for {} slots: at least {needed} bytes needed",
            path.display(),
            dev.size(),
            nodes.len()
        ));
    }
    let mut header = AlignedBlock::new();
    let b = header.bytes_mut();
    b[..8].copy_from_slice(HEADER_MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&(nodes.len() as u16).to_le_bytes());
    let name = name_bytes(cluster, "cluster name")?;
    b[12] = name.len() as u8;
    b[16..16 + name.len()].copy_from_slice(&name);
    seal(b);
    for (i, node) in nodes.iter().enumerate() {
        let block = encode_slot(&Slot::clear(node, 0), i as u16, i as u16)?;
        dev.write_block(slot_offset(i as u16), &block).map_err(|e| e.to_string())?;
    }
    // The header last: a device is initialised only once every slot is.
    dev.write_block(0, &header).map_err(|e| e.to_string())
}

/// Checks the header: initialised, for `cluster`, with a slot for each of `nodes` nodes.
pub fn check_header(path: &Path, cluster: &str, nodes: usize) -> Result<(), String> {
    let mut dev = open(path, false)?;
    let block = dev.read_block(0).map_err(|e| e.to_string())?;
    let b = block.bytes();
    checked(b, HEADER_MAGIC, "header").map_err(|e| format!("{}: {e}", path.display()))?;
    let slots = u16::from_le_bytes([b[10], b[11]]);
    let name = text(b, 12, 16);
    if name != cluster {
        return Err(format!(
            "{}: the storage fence device belongs to cluster `{name}`, not `{cluster}`; give this cluster its own device",
            path.display()
        ));
    }
    if usize::from(slots) < nodes {
        return Err(format!(
            "{}: the device has {slots} slots for {nodes} nodes; run `takeover storage-fence init` again",
            path.display()
        ));
    }
    Ok(())
}

/// Reads slot `index`.
pub fn read_slot(path: &Path, index: u16) -> Result<Slot, String> {
    let mut dev = open(path, false)?;
    let block = dev.read_block(slot_offset(index)).map_err(|e| e.to_string())?;
    decode_slot(block.bytes()).map_err(|e| format!("{}: slot {index}: {e}", path.display()))
}

/// Writes `slot` to slot `index` and reads it back.
fn write_slot(path: &Path, index: u16, sender_index: u16, slot: &Slot) -> Result<(), String> {
    let mut dev = open(path, true)?;
    let block = encode_slot(slot, index, sender_index)?;
    dev.write_block(slot_offset(index), &block).map_err(|e| e.to_string())?;
    let back = dev.read_block(slot_offset(index)).map_err(|e| e.to_string())?;
    match decode_slot(back.bytes()) {
        Ok(read) if read == *slot => Ok(()),
        Ok(read) => Err(format!("{}: slot {index} reads back as {read:?} after writing {slot:?}", path.display())),
        Err(e) => Err(format!("{}: slot {index} unreadable after writing it: {e}", path.display())),
    }
}

/// Writes the poison pill for `target` (slot `target_index`) from `sender`; returns the
/// message's sequence number.
pub fn poison(path: &Path, target_index: u16, target: &str, sender_index: u16, sender: &str) -> Result<u64, String> {
    let sequence = read_slot(path, target_index)?.sequence + 1;
    let slot = Slot { poison: true, sequence, target: target.to_string(), sender: sender.to_string() };
    write_slot(path, target_index, sender_index, &slot)?;
    Ok(sequence)
}

/// Clears slot `index` of `node` (a starting agent, or the operator).
pub fn clear(path: &Path, index: u16, node: &str) -> Result<(), String> {
    let sequence = read_slot(path, index)?.sequence + 1;
    write_slot(path, index, index, &Slot::clear(node, sequence))
}

/// The fence: refuse if this node is poisoned itself, write the pill, wait `msgwait`.
pub async fn fence(path: &Path, me: (u16, &str), target: (u16, &str), msgwait: Duration) -> Result<String, String> {
    let (path2, me_name, target_name) = (path.to_path_buf(), me.1.to_string(), target.1.to_string());
    let sequence = tokio::task::spawn_blocking(move || {
        let own = read_slot(&path2, me.0)?;
        if own.poison {
            return Err(format!(
                "this node was itself fenced through the storage device by {} (message {}): it does not fence anyone",
                own.sender, own.sequence
            ));
        }
        poison(&path2, target.0, &target_name, me.0, &me_name)
    })
    .await
    .map_err(|e| format!("the storage write task failed: {e}"))??;
    tokio::time::sleep(msgwait).await;
    Ok(format!(
        "poison message {sequence} written to {}'s slot on {}, then msgwait {} passed",
        target.1,
        path.display(),
        crate::config::format_duration(msgwait)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("sbd.img");
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        path
    }

    fn nodes() -> Vec<String> {
        vec!["alpha".into(), "beta".into()]
    }

    #[test]
    fn init_then_poison_and_clear_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = device(dir.path());
        let err = check_header(&path, "prod", 2).unwrap_err();
        assert!(err.contains("not initialised") && err.contains("takeover storage-fence init"), "{err}");
        init(&path, "prod", &nodes()).unwrap();
        check_header(&path, "prod", 2).unwrap();
        assert_eq!(read_slot(&path, 1).unwrap(), Slot::clear("beta", 0));
        assert_eq!(poison(&path, 1, "beta", 0, "alpha").unwrap(), 1);
        let slot = read_slot(&path, 1).unwrap();
        assert!(slot.poison && slot.sender == "alpha" && slot.target == "beta" && slot.sequence == 1, "{slot:?}");
        assert!(!read_slot(&path, 0).unwrap().poison, "only the target's slot changes");
        clear(&path, 1, "beta").unwrap();
        assert_eq!(read_slot(&path, 1).unwrap(), Slot::clear("beta", 2));
    }

    #[test]
    fn a_device_of_another_cluster_or_too_few_slots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = device(dir.path());
        init(&path, "prod", &nodes()).unwrap();
        let err = check_header(&path, "test", 2).unwrap_err();
        assert!(err.contains("belongs to cluster `prod`, not `test`"), "{err}");
        let err = check_header(&path, "prod", 3).unwrap_err();
        assert!(err.contains("2 slots for 3 nodes"), "{err}");
    }

    #[test]
    fn damage_is_reported_not_read_as_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = device(dir.path());
        init(&path, "prod", &nodes()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[BLOCK as usize * 2 + 40] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_slot(&path, 1).unwrap_err();
        assert!(err.contains("corrupt"), "{err}");
        bytes[BLOCK as usize * 2..BLOCK as usize * 2 + 8].copy_from_slice(b"XXXXXXXX");
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_slot(&path, 1).unwrap_err().contains("something else"));
    }

    #[tokio::test]
    async fn the_fence_writes_the_pill_waits_msgwait_and_a_poisoned_node_does_not_fence() {
        let dir = tempfile::tempdir().unwrap();
        let path = device(dir.path());
        init(&path, "prod", &nodes()).unwrap();
        let started = std::time::Instant::now();
        let done = fence(&path, (0, "alpha"), (1, "beta"), Duration::from_millis(200)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(done.contains("poison message 1 written to beta's slot"), "{done}");
        assert!(read_slot(&path, 1).unwrap().poison);
        // beta, poisoned, tries to fence alpha back: refused, alpha's slot untouched.
        let err = fence(&path, (1, "beta"), (0, "alpha"), Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("was itself fenced through the storage device by alpha"), "{err}");
        assert!(!read_slot(&path, 0).unwrap().poison);
    }
}
