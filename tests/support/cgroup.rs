//! A memory cgroup of the test's own, and the real `serve` binary started
//! inside it: what tests/memory.rs and tests/memory_limits.rs measure the
//! whole-process bound with. Skipped, with the reason, where no memory
//! cgroup can be made.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A memory cgroup of our own (v2 with the memory controller, else v1), as a
/// child of this process's own cgroup; removed on drop.
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    pub fn create(limit: u64) -> Result<MemoryCgroup, String> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        // One name per cgroup: tests of one process may each make one.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("model-router-test-{}-{made}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, files): (PathBuf, &[&str]) = if v2_memory {
            let own = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 line")?;
            (
                v2_root.join(own.trim_start_matches('/')).join(&name),
                &["memory.max", "memory.swap.max"],
            )
        } else {
            let own = cgroups
                .lines()
                .find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                    controllers
                        .split(',')
                        .any(|c| c == "memory")
                        .then_some(path)
                })
                .ok_or("no memory cgroup (neither v2 with the memory controller nor v1)")?;
            let root = Path::new("/sys/fs/cgroup/memory");
            if !root.exists() {
                return Err("no /sys/fs/cgroup/memory".into());
            }
            (
                root.join(own.trim_start_matches('/')).join(&name),
                &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
            )
        };
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        for (i, file) in files.iter().enumerate() {
            let path = cgroup.dir.join(file);
            let value = if v2_memory && i == 1 {
                "0".to_string()
            } else {
                limit.to_string()
            };
            // The swap limit may be absent (no swap accounting): then only memory.
            if path.exists() {
                std::fs::write(&path, value).map_err(|e| format!("{}: {e}", path.display()))?;
            } else if i == 0 {
                return Err(format!("{} missing", path.display()));
            }
        }
        Ok(cgroup)
    }

    /// The cgroup's peak memory use (v2 memory.peak, v1 max_usage_in_bytes).
    pub fn peak_bytes(&self) -> u64 {
        ["memory.peak", "memory.max_usage_in_bytes"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(self.dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// The cgroup's memory use now (v2 memory.current, v1 usage_in_bytes).
    pub fn usage_bytes(&self) -> u64 {
        ["memory.current", "memory.usage_in_bytes"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(self.dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Starts the peak over from the use now, where the cgroup allows it
    /// (v1 max_usage_in_bytes); false where the peak counts from creation.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(self.dir.join("memory.max_usage_in_bytes"), "0").is_ok()
    }

    /// Whether the kernel's OOM killer acted in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        // v2 memory.events and v1 memory.oom_control both have an oom_kill line.
        ["memory.events", "memory.oom_control"]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .find_map(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The child has exited by now; an empty cgroup can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `model-router serve` started inside `cgroup`, on 127.0.0.1:0.
pub fn serve_in(
    cgroup: &MemoryCgroup,
    root: &Path,
    staging: &Path,
) -> (Child, std::net::SocketAddr) {
    serve_in_with(cgroup, root, staging, &[])
}

/// [`serve_in`] with more `serve` arguments (`--cache-bytes 64MiB`).
pub fn serve_in_with(
    cgroup: &MemoryCgroup,
    root: &Path,
    staging: &Path,
    args: &[&str],
) -> (Child, std::net::SocketAddr) {
    let procs = cgroup.dir.join("cgroup.procs");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}' && exec \"$0\" \"$@\"",
            procs.display()
        ))
        .arg(env!("CARGO_BIN_EXE_model-router"))
        .args(["serve", "--addr", "127.0.0.1:0", "--repo"])
        .arg(root)
        .arg("--staging-dir")
        .arg(staging)
        .args(args)
        .env_remove("MEMORY_LIMIT_BYTES")
        .env_remove("MODEL_CACHE_BYTES")
        .env_remove("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let addr = lines
        .find_map(|line| {
            line.ok()?
                .strip_prefix("model-router listening on http://")?
                .parse()
                .ok()
        })
        .expect("the server announces its address");
    (child, addr)
}
