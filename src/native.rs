//! The native worker library this binary carries (built from `worker/` by `build.rs`), and
//! writing it out where a child's launcher can import it.
//!
//! Owns nothing at run time but the files it writes: one folder per library build, named by
//! its content hash, so a running child's mapped library is never overwritten and concurrent
//! starts never see half a file.

use std::io;
use std::path::{Path, PathBuf};

static LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wsgimux_native.abi3.so"));
const HASH: &str = env!("WSGIMUX_NATIVE_HASH");
/// The name Python imports it by (`import wsgimux_native`); `.abi3.so` loads on every CPython
/// from 3.9 on, on Linux and macOS alike.
const FILE: &str = "wsgimux_native.abi3.so";
const DIR_PREFIX: &str = "native-";

/// The library's content hash: what names its folder.
pub fn hash() -> u64 {
    u64::from_str_radix(HASH, 16).unwrap_or(0)
}

/// Writes the library under `dir` (once per build) and returns the folder to put on the
/// child's `sys.path`. Folders of other builds are removed.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    let folder = dir.join(format!("{DIR_PREFIX}{HASH}"));
    let file = folder.join(FILE);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(DIR_PREFIX) && e.path() != folder {
                // A child of a previous build keeps its mapping; only the name goes.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if file.metadata().map(|m| m.len()).ok() == Some(LIBRARY.len() as u64) {
        return Ok(folder);
    }
    std::fs::create_dir_all(&folder)?;
    let tmp = folder.join(format!(".{FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, LIBRARY)?;
    std::fs::rename(&tmp, &file)?;
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_per_build_and_removes_other_builds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("native-0000000000000000")).unwrap();
        let folder = install(dir.path()).unwrap();
        let file = folder.join(FILE);
        assert_eq!(std::fs::read(&file).unwrap().len(), LIBRARY.len());
        assert!(!dir.path().join("native-0000000000000000").exists());
        let modified = file.metadata().unwrap().modified().unwrap();
        assert_eq!(install(dir.path()).unwrap(), folder);
        assert_eq!(file.metadata().unwrap().modified().unwrap(), modified);
        // An ELF or Mach-O shared library, not an empty placeholder.
        assert!(LIBRARY.len() > 100_000);
    }
}
