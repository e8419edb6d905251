//! Small durable state files: a group's [`GroupDurable`] state and the node's incarnation.
//! (The pid files for leftovers and `fence-local` live in [`crate::service`].)
//!
//! Every file is written whole with [`write_atomic`] (temporary file, fsync, rename,
//! directory fsync), so after a crash it holds either the old or the new content. Each is
//! plain text an operator can `cat`, ending with a `crc32 = xxxxxxxx` line over every byte
//! before it, and is read back strictly: a file that is torn, truncated, edited, of an
//! unknown version or out of range is refused with [`StoreError::Corrupt`], never taken as
//! a valid state. A state file that is absent means "first start"; one that is present but
//! unreadable must stop the agent, because guessing a priority can start a group twice.
//!
//! ```text
//! takeover group-state v1
//! priority = 2
//! epoch = 5.1
//! epoch_forced = false
//! role = M
//! join_only = false
//! crc32 = 1a2b3c4d
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use takeover_core::group::GroupDurable;
use takeover_core::{Epoch, Incarnation, Priority, Role};

/// Which kind of state file an error is about; it decides what the operator is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateFile {
    /// A group's priority, epoch, role and join-only flag.
    Group,
    /// The node's agent incarnation.
    Node,
}

impl StateFile {
    /// What the operator should do about a corrupt file of this kind.
    pub fn advice(self) -> &'static str {
        match self {
            StateFile::Group => {
                "the priority cannot be trusted; restore the file from a backup, or remove it \
                 and start this node with --join-only so that it rejoins its peer as SL"
            }
            StateFile::Node => {
                "the incarnation cannot be trusted; restore the file from a backup, or stop \
                 the agents on the other nodes before removing it (they ignore an \
                 incarnation of this node that goes backwards)"
            }
        }
    }

    /// The first line of a file of this kind, naming the format and its version.
    fn header(self) -> &'static str {
        match self {
            StateFile::Group => "takeover group-state v1",
            StateFile::Node => "takeover node-state v1",
        }
    }
}

impl fmt::Display for StateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateFile::Group => "group state file",
            StateFile::Node => "node state file",
        })
    }
}

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but its content cannot be trusted.
    #[error("{file} {} is corrupt ({detail}): {}", .path.display(), .file.advice())]
    Corrupt { file: StateFile, path: PathBuf, detail: String },
    /// The file could not be read or written.
    #[error("cannot {op} {file} {}: {source}", .path.display())]
    Io {
        file: StateFile,
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Replaces the content of `path` with `bytes` so that a crash at any point leaves either
/// the old content or the new one, never a mix or an empty file.
///
/// The order matters and is fixed: write a temporary file in the same directory (a rename
/// is only atomic within one file system), `sync_all` it (so the new name never points at
/// data still in the page cache), rename it over `path`, then fsync the directory (so the
/// rename itself survives a crash). The temporary file is removed if any step before the
/// rename fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_observed(path, bytes, &mut |_| {})
}

/// Reads the group state at `path`: `Ok(None)` if the file does not exist (first start),
/// `Err(StoreError::Corrupt)` for any content that is not exactly what
/// [`save_group_state`] writes.
pub fn load_group_state(path: &Path) -> Result<Option<GroupDurable>, StoreError> {
    let Some(bytes) = read_if_exists(StateFile::Group, path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StoreError::Corrupt { file: StateFile::Group, path: path.to_owned(), detail };
    let values = parse_checked(StateFile::Group, &bytes, &["priority", "epoch", "epoch_forced", "role", "join_only"])
        .map_err(corrupt)?;
    let state = parse_group_values(&values).map_err(corrupt)?;
    // Different text can name the same number ("05", "+5"); only the one spelling that
    // save_group_state writes is accepted, so a file maps to exactly one state.
    if render_group(&state) != bytes {
        return Err(corrupt("not in the form takeover writes".into()));
    }
    Ok(Some(state))
}

/// Writes the group state to `path` atomically (see [`write_atomic`]).
pub fn save_group_state(path: &Path, state: &GroupDurable) -> io::Result<()> {
    write_atomic(path, &render_group(state))
}

/// Raises the node's incarnation by one, durably, and returns the new value: reads the
/// previous value at `path` (absent means 0), adds one and writes it back atomically.
/// A corrupt file is an error, never a reset: a repeated incarnation would let a peer take
/// this run for a previous one.
pub fn next_incarnation(path: &Path) -> Result<Incarnation, StoreError> {
    let previous = match read_if_exists(StateFile::Node, path)? {
        None => 0,
        Some(bytes) => parse_u64_file(StateFile::Node, path, &bytes, &["incarnation"])?[0],
    };
    let next = previous.checked_add(1).ok_or_else(|| StoreError::Corrupt {
        file: StateFile::Node,
        path: path.to_owned(),
        detail: "the incarnation is at its maximum".into(),
    })?;
    write_atomic(path, &render(StateFile::Node, &[("incarnation", next.to_string())]))
        .map_err(|source| StoreError::Io { file: StateFile::Node, path: path.to_owned(), op: "write", source })?;
    Ok(Incarnation(next))
}

/// One step of [`write_atomic`], reported to tests so they can check the order and look
/// at the target file between steps (where a crash could happen).
#[derive(Clone, Debug, PartialEq, Eq)]
enum AtomicStep {
    TmpSynced,
    Renamed,
    DirSynced,
}

fn write_atomic_observed(path: &Path, bytes: &[u8], observe: &mut dyn FnMut(AtomicStep)) -> io::Result<()> {
    let dir = parent_dir(path);
    let (tmp_path, mut tmp) = create_tmp(path)?;
    let written = tmp.write_all(bytes).and_then(|()| tmp.sync_all());
    drop(tmp);
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(err);
    }
    observe(AtomicStep::TmpSynced);
    if let Err(err) = fs::rename(&tmp_path, path) {
        let _ = fs::remove_file(&tmp_path);
        return Err(err);
    }
    observe(AtomicStep::Renamed);
    sync_dir(dir)?;
    observe(AtomicStep::DirSynced);
    Ok(())
}

/// Fsyncs a directory, making the creation, removal or renaming of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path`, `.` for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new temporary file beside `path`, named `.<name>.<pid>.<n>.tmp`. `create_new`
/// guarantees it is ours: one left by a crashed run with the same pid is skipped, not
/// reused.
fn create_tmp(path: &Path) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = parent_dir(path);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp_path = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp_path) {
            Ok(file) => return Ok((tmp_path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

fn read_if_exists(file: StateFile, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io { file, path: path.to_owned(), op: "read", source }),
    }
}

/// The text of a state file: the header, one `key = value` line per field, then the crc
/// line over all of it.
fn render(file: StateFile, fields: &[(&str, String)]) -> Vec<u8> {
    let mut text = format!("{}\n", file.header());
    for (key, value) in fields {
        text.push_str(&format!("{key} = {value}\n"));
    }
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("crc32 = {crc:08x}\n"));
    text.into_bytes()
}

fn render_group(state: &GroupDurable) -> Vec<u8> {
    render(
        StateFile::Group,
        &[
            ("priority", state.priority.to_string()),
            ("epoch", format!("{}.{}", state.epoch.counter, state.epoch.node)),
            ("epoch_forced", state.epoch.forced.to_string()),
            ("role", state.role.as_str().to_string()),
            ("join_only", state.join_only.to_string()),
        ],
    )
}

/// Checks the header, the crc line and that the lines are exactly `keys` in order;
/// returns the values. The error is the detail for [`StoreError::Corrupt`].
fn parse_checked<'a>(file: StateFile, bytes: &'a [u8], keys: &[&str]) -> Result<Vec<&'a str>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let header = text.split('\n').next().unwrap_or("");
    if header != file.header() {
        let prefix = file.header().trim_end_matches("v1");
        return Err(match header.strip_prefix(prefix) {
            Some(version) => format!("unknown format version {version:?}, written by another version of takeover?"),
            None => format!("not a {file}: first line is {header:?}"),
        });
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err("truncated: no final newline".into());
    };
    // The crc line is the last line; it covers every byte before it.
    let crc_start = body.rfind('\n').map_or(0, |i| i + 1);
    let (covered, crc_line) = body.split_at(crc_start);
    let Some(crc_text) = crc_line.strip_prefix("crc32 = ") else {
        return Err("truncated: the crc32 line is missing".into());
    };
    let stored = parse_hex_u32(crc_text).ok_or("malformed crc32 line")?;
    let actual = crc32fast::hash(covered.as_bytes());
    if stored != actual {
        return Err(format!("crc mismatch: the file says {stored:08x}, its content gives {actual:08x}"));
    }
    // Not `lines()`, which would also accept "\r\n": only the form takeover writes.
    let mut lines = covered.split_terminator('\n').skip(1);
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let line = lines.next().ok_or(format!("the {key} line is missing"))?;
        let value = line
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(" = "))
            .ok_or(format!("expected the {key} line, found {line:?}"))?;
        values.push(value);
    }
    if let Some(line) = lines.next() {
        return Err(format!("unexpected line {line:?}"));
    }
    Ok(values)
}

/// Exactly eight lowercase hex digits, as [`render`] writes them.
fn parse_hex_u32(text: &str) -> Option<u32> {
    let canonical = text.len() == 8 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// A decimal number as [`render`] writes it: digits only, no sign, no leading zero.
fn parse_decimal(key: &str, text: &str) -> Result<u64, String> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(format!("{key} {text:?} is not a number"));
    }
    text.parse().map_err(|_| format!("{key} {text:?} is out of range"))
}

fn parse_bool(key: &str, text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key} {text:?} is neither true nor false")),
    }
}

fn parse_group_values(values: &[&str]) -> Result<GroupDurable, String> {
    let &[priority, epoch, epoch_forced, role, join_only] = values else {
        return Err("wrong number of fields".into());
    };
    let priority = parse_decimal("priority", priority)?;
    let priority = u8::try_from(priority)
        .ok()
        .and_then(Priority::from_number)
        .ok_or(format!("priority {priority} is not 1, 2 or 3"))?;
    let (counter, node) = epoch.split_once('.').ok_or(format!("epoch {epoch:?} is not COUNTER.NODE"))?;
    let counter = parse_decimal("epoch counter", counter)?;
    let node = parse_decimal("epoch node", node)?;
    let node = u16::try_from(node).map_err(|_| format!("epoch node {node} is out of range"))?;
    let forced = parse_bool("epoch_forced", epoch_forced)?;
    let role = [Role::X, Role::Sl, Role::Sm, Role::M]
        .into_iter()
        .find(|r| r.as_str() == role)
        .ok_or(format!("role {role:?} is not X, SL, SM or M"))?;
    let join_only = parse_bool("join_only", join_only)?;
    Ok(GroupDurable { priority, epoch: Epoch { counter, node, forced }, role, join_only })
}

/// Parses a file whose fields are all decimal numbers, refusing any non-canonical text.
fn parse_u64_file(file: StateFile, path: &Path, bytes: &[u8], keys: &[&str]) -> Result<Vec<u64>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { file, path: path.to_owned(), detail };
    let values = parse_checked(file, bytes, keys).map_err(corrupt)?;
    keys.iter().zip(values).map(|(key, value)| parse_decimal(key, value).map_err(corrupt)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_group() -> GroupDurable {
        GroupDurable {
            priority: Priority::P2,
            epoch: Epoch { counter: 5, node: 1, forced: false },
            role: Role::M,
            join_only: false,
        }
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn assert_corrupt<T: fmt::Debug>(result: Result<T, StoreError>, what: &str) {
        match result {
            Err(StoreError::Corrupt { .. }) => {}
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(dir_entries(dir.path()), ["f"]);
    }

    #[test]
    fn atomic_write_syncs_tmp_then_renames_then_syncs_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old").unwrap();
        let mut steps = Vec::new();
        // At every step a crash could leave the file as it is now: it must be whole,
        // old before the rename and new from it on.
        write_atomic_observed(&path, b"new", &mut |step| {
            let content = fs::read(&path).unwrap();
            let expected: &[u8] = if step == AtomicStep::TmpSynced { b"old" } else { b"new" };
            assert_eq!(content, expected, "content at {step:?}");
            steps.push(step);
        })
        .unwrap();
        assert_eq!(steps, [AtomicStep::TmpSynced, AtomicStep::Renamed, AtomicStep::DirSynced]);
        assert_eq!(dir_entries(dir.path()), ["f"]);
    }

    #[test]
    fn atomic_write_failure_leaves_old_content_and_no_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the tmp file was written.
        let path = dir.path().join("d");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(dir_entries(dir.path()), ["d"]);
        assert!(write_atomic(&dir.path().join("missing/f"), b"new").is_err());
    }

    #[test]
    fn atomic_write_accepts_a_bare_file_name_relative_path() {
        assert_eq!(parent_dir(Path::new("f")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/f")), Path::new("/a"));
    }

    #[test]
    fn group_state_round_trips_in_the_documented_text_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.state");
        assert!(load_group_state(&path).unwrap().is_none());
        let state = sample_group();
        save_group_state(&path, &state).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let crc = crc32fast::hash(
            b"takeover group-state v1\npriority = 2\nepoch = 5.1\nepoch_forced = false\n\
              role = M\njoin_only = false\n",
        );
        assert_eq!(
            text,
            format!(
                "takeover group-state v1\npriority = 2\nepoch = 5.1\nepoch_forced = false\n\
                 role = M\njoin_only = false\ncrc32 = {crc:08x}\n"
            )
        );
        assert_eq!(load_group_state(&path).unwrap(), Some(state));
        for role in [Role::X, Role::Sl, Role::Sm, Role::M] {
            for priority in [Priority::P1, Priority::P2, Priority::P3] {
                let state = GroupDurable {
                    priority,
                    epoch: Epoch { counter: u64::MAX, node: u16::MAX, forced: true },
                    role,
                    join_only: true,
                };
                save_group_state(&path, &state).unwrap();
                assert_eq!(load_group_state(&path).unwrap(), Some(state));
            }
        }
    }

    #[test]
    fn every_byte_flip_of_a_group_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.state");
        let good = render_group(&sample_group());
        for i in 0..good.len() {
            for mask in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= mask;
                fs::write(&path, &bad).unwrap();
                assert_corrupt(load_group_state(&path), &format!("byte {i} ^ {mask:#x}"));
            }
        }
    }

    #[test]
    fn every_truncation_or_extension_of_a_group_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.state");
        let good = render_group(&sample_group());
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert_corrupt(load_group_state(&path), &format!("truncated to {len}"));
        }
        let mut longer = good.clone();
        longer.extend_from_slice(b"priority = 1\n");
        fs::write(&path, &longer).unwrap();
        assert_corrupt(load_group_state(&path), "extended");
    }

    /// Builds a file with a correct crc around arbitrary field text: what a buggy writer
    /// or a hand edit that recomputed the crc would produce.
    fn with_crc(lines: &str) -> Vec<u8> {
        let crc = crc32fast::hash(lines.as_bytes());
        format!("{lines}crc32 = {crc:08x}\n").into_bytes()
    }

    #[test]
    fn out_of_range_or_unknown_group_state_is_refused_even_with_a_good_crc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.state");
        let body = |priority: &str, epoch: &str, role: &str| {
            format!(
                "takeover group-state v1\npriority = {priority}\nepoch = {epoch}\n\
                 epoch_forced = false\nrole = {role}\njoin_only = false\n"
            )
        };
        let cases = [
            body("0", "5.1", "M"),
            body("4", "5.1", "M"),
            body("02", "5.1", "M"),
            body("+2", "5.1", "M"),
            body("256", "5.1", "M"),
            body("2", "5", "M"),
            body("2", "5.65536", "M"),
            body("2", "18446744073709551616.1", "M"),
            body("2", "5.1", "m"),
            body("2", "5.1", "Z"),
            "takeover group-state v2\npriority = 2\n".to_string(),
            "takeover node-state v1\nincarnation = 2\n".to_string(),
            "takeover group-state v1\npriority = 2\n".to_string(),
            body("2", "5.1", "M") + "extra = 1\n",
        ];
        for case in cases {
            fs::write(&path, with_crc(&case)).unwrap();
            assert_corrupt(load_group_state(&path), &case);
        }
        // An upper-case crc is not the form takeover writes.
        let good = String::from_utf8(render_group(&sample_group())).unwrap();
        let (fields, crc) = good.split_at(good.rfind("crc32 = ").unwrap());
        assert_ne!(crc, crc.to_uppercase(), "the sample crc has hex letters");
        let upper = format!("{fields}crc32 = {}", crc["crc32 = ".len()..].to_uppercase());
        fs::write(&path, upper).unwrap();
        assert_corrupt(load_group_state(&path), "upper-case crc");
    }

    #[test]
    fn corrupt_error_names_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.state");
        let mut bad = render_group(&sample_group());
        let at = bad.iter().position(|&b| b == b'2').unwrap();
        bad[at] = b'1';
        fs::write(&path, &bad).unwrap();
        let message = load_group_state(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("crc mismatch"), "{message}");
        assert!(message.contains("--join-only"), "{message}");
    }

    #[test]
    fn incarnation_rises_by_one_per_start_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.state");
        assert_eq!(next_incarnation(&path).unwrap(), Incarnation(1));
        assert_eq!(next_incarnation(&path).unwrap(), Incarnation(2));
        assert_eq!(next_incarnation(&path).unwrap(), Incarnation(3));
        assert_eq!(dir_entries(dir.path()), ["node.state"]);
    }

    #[test]
    fn corrupt_incarnation_is_refused_never_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.state");
        next_incarnation(&path).unwrap();
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            assert_corrupt(next_incarnation(&path), &format!("flip {i}"));
            // The corrupt file was left alone for the operator.
            assert_eq!(fs::read(&path).unwrap(), bad);
        }
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            assert_corrupt(next_incarnation(&path), &format!("truncated to {len}"));
        }
        fs::write(&path, with_crc("takeover node-state v1\nincarnation = -1\n")).unwrap();
        assert_corrupt(next_incarnation(&path), "negative");
        for text in ["5\r", "05", "+5", " 5"] {
            let body = format!("takeover node-state v1\nincarnation = {text}\n");
            fs::write(&path, with_crc(&body)).unwrap();
            assert_corrupt(next_incarnation(&path), &format!("{text:?}"));
        }
        let max = format!("takeover node-state v1\nincarnation = {}\n", u64::MAX);
        fs::write(&path, with_crc(&max)).unwrap();
        assert_corrupt(next_incarnation(&path), "at maximum");
    }
}
