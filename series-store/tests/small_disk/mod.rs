//! A real small filesystem for tests: a tmpfs mounted on a temporary directory (the tests run
//! as root), unmounted on drop. Used by this crate's `tests/store_full_disk.rs` and by the hub
//! (`hub/tests/hub_full_disk.rs`, and its unit tests through `hub/src/redb_file.rs`) and the
//! agent (`edge-agent/tests/full_disk.rs`, the queue's unit tests), which include this file by
//! path.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `"8m"`).
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and must run as root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full, then gives `leave` bytes back; returns the
    /// file.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let block = vec![0xA5u8; 64 << 10];
        let mut len = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Whatever fits in a last partial block too.
        let mut small = vec![0xA5u8; 512];
        while let Ok(n) = f.write(&small) {
            if n == 0 {
                break;
            }
            len += n as u64;
            small.truncate(n);
        }
        f.set_len(len.saturating_sub(leave)).expect("shrink filler");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process under test may still hold a file open there if the test failed.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
