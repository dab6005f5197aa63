//! The API store holds Secrets, so everything under `DATA_DIR/api` is its owner's alone: directories
//! 0700, files 0600. sled creates its files with the process umask and offers no mode of its own, so the
//! server creates the directory private, and after opening the store tightens whatever sled made (and
//! whatever an older version left readable); `fm serve` also sets the umask to 077 so that files sled
//! creates later (blobs, snapshots) are born private.

use std::path::Path;

/// Creates `dir` (and its missing parents) with mode 0700, and tightens it if it existed.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    set_mode(dir, 0o700)
}

/// Makes every directory under `dir` (and `dir`) 0700 and every file 0600.
pub fn tighten_tree(dir: &Path) -> std::io::Result<()> {
    set_mode(dir, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tighten_tree(&entry.path())?;
        } else if kind.is_file() {
            set_mode(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

/// Files and directories created by this process from now on are private to its user (a umask of
/// 077). For processes whose data dir holds Secrets (`fm serve`); call before starting threads.
pub fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_tree_becomes_owner_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("api");
        create_private_dir(&dir.join("blobs")).expect("create");
        std::fs::write(dir.join("db"), b"x").expect("write");
        std::fs::write(dir.join("blobs/1"), b"x").expect("write");
        std::fs::set_permissions(dir.join("db"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        tighten_tree(&dir).expect("tighten");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("blobs")), 0o700);
        assert_eq!(mode(&dir.join("db")), 0o600);
        assert_eq!(mode(&dir.join("blobs/1")), 0o600);
    }
}
