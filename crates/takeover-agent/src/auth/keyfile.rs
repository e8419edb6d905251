//! The cluster key file: exactly 32 random bytes (like Corosync's `authkey`), readable by
//! the agent's user alone.
//!
//! [`load`] refuses a key file that its group or others may read or write (`chmod 600`
//! fixes it), one owned by a user other than the agent's or root (that user could read or
//! replace it), and one of the wrong length. [`write_new`] (`takeover keygen`) writes a new
//! key atomically with mode 0600 from the first byte: a temporary file beside the target
//! (created 0600), fsynced, then linked to the target name — which fails if the target
//! exists, so a key in use is never replaced by accident — or renamed over it with
//! `--force`; then the directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{ClusterKey, KEY_LEN};

/// Where `takeover keygen` writes by default, and what the examples use.
pub const DEFAULT_PATH: &str = "/etc/takeover/cluster.key";

/// Why a key file cannot be used or written. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "the cluster key file {path} does not exist: create it with `takeover keygen --out {path}` on one node and copy it to every node (e.g. `scp -p`), mode 0600",
        path = .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read the cluster key file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the cluster key file {} is not a regular file; give the path of the key file `takeover keygen` wrote", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "the cluster key file {} has mode {mode:04o}: its group or others may read or change it, and whoever reads it can forge cluster traffic; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "the cluster key file {} is owned by uid {owner}, but the agent runs as uid {me}: that user can read and replace the key; run `chown {me} {}` (the file must belong to root or to the agent's user)",
        path.display(),
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "the cluster key file {} holds {len} bytes, not the {KEY_LEN} random bytes of a cluster key: write a new one with `takeover keygen --out {} --force` and copy it to every node",
        path.display(),
        path.display()
    )]
    Length { path: PathBuf, len: u64 },
    #[error(
        "{} already exists and may be the key the cluster uses; pass --force to replace it (then copy the new key to every node and restart their agents)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot write the cluster key file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Reads the key at `path`, refusing it if anyone but its owner may read or change it.
pub fn load(path: &Path) -> Result<ClusterKey, KeyFileError> {
    let read_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            KeyFileError::Missing(path.to_owned())
        } else {
            KeyFileError::Read { path: path.to_owned(), source }
        }
    };
    let mut file = File::open(path).map_err(read_error)?;
    // The checks look at the file that was opened, not at the path again.
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile(path.to_owned()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.to_owned(), mode });
    }
    let me = effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(KeyFileError::Owner { path: path.to_owned(), owner: meta.uid(), me });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(KeyFileError::Length { path: path.to_owned(), len: meta.len() });
    }
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    Read::by_ref(&mut file).take(KEY_LEN as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    let bytes: [u8; KEY_LEN] =
        bytes.try_into().map_err(|it: Vec<u8>| KeyFileError::Length { path: path.to_owned(), len: it.len() as u64 })?;
    Ok(ClusterKey::from_bytes(bytes))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Writes `key` to `path` with mode 0600, atomically; refuses to replace an existing
/// file unless `force`. Creates missing parent directories.
pub fn write(path: &Path, key: &ClusterKey, force: bool) -> Result<(), KeyFileError> {
    let write_error = |source: io::Error| KeyFileError::Write { path: path.to_owned(), source };
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(KeyFileError::Exists(path.to_owned()));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| write_error(io::Error::other("the path names no file")))?;
    fs::create_dir_all(dir).map_err(write_error)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.keygen.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask can only take bits away; set exactly 0600 whatever it is.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(key.as_bytes())?;
        file.sync_all()?;
        if force { fs::rename(&tmp, path) } else { fs::hard_link(&tmp, path) }
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(KeyFileError::Exists(path.to_owned())),
        Err(e) => return Err(write_error(e)),
    }
    File::open(dir).and_then(|it| it.sync_all()).map_err(write_error)
}

/// `takeover keygen`: a new random key written to `path` (see [`write`]).
pub fn write_new(path: &Path, force: bool) -> Result<(), KeyFileError> {
    write(path, &ClusterKey::generate(), force)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn keygen_writes_32_random_bytes_with_mode_0600_and_they_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/takeover/cluster.key");
        write_new(&path, false).unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), KEY_LEN);
        assert_eq!(mode_of(&path), 0o600);
        let key = load(&path).unwrap();
        assert_eq!(key.as_bytes().as_slice(), fs::read(&path).unwrap().as_slice());
        // Nothing is left beside it.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|it| it.unwrap().file_name()).collect();
        assert_eq!(names, ["cluster.key"]);
        // Two keys are never the same.
        let other = dir.path().join("other.key");
        write_new(&other, false).unwrap();
        assert_ne!(load(&other).unwrap(), key);
    }

    #[test]
    fn keygen_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        write_new(&path, false).unwrap();
        let before = fs::read(&path).unwrap();
        let error = write_new(&path, false).unwrap_err();
        assert!(matches!(error, KeyFileError::Exists(_)), "{error}");
        assert!(error.to_string().contains("pass --force to replace it"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), before, "the existing key is untouched");
        write_new(&path, true).unwrap();
        assert_ne!(fs::read(&path).unwrap(), before, "--force replaces it");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_key_file_its_group_or_others_may_read_or_write_is_refused_with_the_chmod_that_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        write_new(&path, false).unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let error = load(&path).unwrap_err();
            assert!(matches!(error, KeyFileError::Permissions { mode: m, .. } if m == mode), "mode {mode:o}: {error}");
            let text = error.to_string();
            assert!(text.contains(&format!("run `chmod 600 {}`", path.display())), "{text}");
            assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            load(&path).unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
        }
    }

    #[test]
    fn a_key_file_of_the_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 31, 33, 64] {
            let path = dir.path().join(format!("key{len}"));
            fs::write(&path, vec![7u8; len]).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let error = load(&path).unwrap_err();
            assert!(matches!(error, KeyFileError::Length { len: l, .. } if l == len as u64), "{error}");
            assert!(error.to_string().contains("takeover keygen --out"), "{error}");
        }
    }

    #[test]
    fn a_missing_key_file_says_how_to_make_one_and_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");
        let error = load(&path).unwrap_err();
        assert!(matches!(error, KeyFileError::Missing(_)), "{error}");
        assert!(error.to_string().contains(&format!("takeover keygen --out {}", path.display())), "{error}");
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(load(&sub), Err(KeyFileError::NotAFile(_))));
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        write_new(&path, false).unwrap();
        if effective_uid() != 0 {
            println!("SKIPPED the chown part (needs root to give the file away)");
            return;
        }
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        // Root reads it anyway; the check is about who else could.
        let error = load(&path).unwrap_err();
        assert!(matches!(error, KeyFileError::Owner { owner: 65534, me: 0, .. }), "{error}");
        assert!(error.to_string().contains(&format!("run `chown 0 {}`", path.display())), "{error}");
    }
}
