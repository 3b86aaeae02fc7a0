//! A container's CPU and memory counters straight from its cgroup, cgroup v2 or v1.
//!
//! Docker's stats API answers only on the engine's one-second collection tick; the cgroup
//! files it reads answer in microseconds. Where the cgroup file system is visible (the host,
//! or a container that mounts it read-only) the node sampler reads them itself and computes
//! the same figures `docker stats` shows. Parsing is pure and tested on fixture text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::stats::{memory_used, MemoryFigures};

/// Why a container's counters could not be read from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{path} is not in the expected format: {detail}")]
    Format { path: String, detail: String },
}

/// Where one container's counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFiles {
    /// cgroup v2: one directory with `cpu.stat`, `memory.current`, `memory.stat`.
    V2 { dir: PathBuf },
    /// cgroup v1: `cpuacct.usage` in the cpuacct hierarchy, `memory.usage_in_bytes` and
    /// `memory.stat` in the memory hierarchy.
    V1 { cpuacct: PathBuf, memory: PathBuf },
}

/// One reading of a container's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupCounters {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use minus inactive file pages, as `docker stats` shows it.
    pub memory_used: u64,
}

/// The cgroup file system mounted at `root` (normally `/sys/fs/cgroup`).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    root: PathBuf,
}

impl CgroupRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CgroupRoot { root: root.into() }
    }

    /// Whether anything usable is mounted there: a v2 tree or a v1 cpuacct hierarchy.
    pub fn is_visible(&self) -> bool {
        self.root.join("cgroup.controllers").is_file() || self.root.join("cpuacct").is_dir()
    }

    /// The files of a container, given its id and the cgroup parent its inspect names
    /// (empty for the engine's default). Docker places a container at `<parent>/<id>` with the
    /// cgroupfs driver (parent `/docker` by default) and at `<parent>/docker-<id>.scope` with
    /// the systemd driver (parent `system.slice`); each candidate is tried in turn, so the
    /// driver need not be known. `None` when no candidate exists (not visible from here).
    pub fn locate(&self, container_id: &str, cgroup_parent: Option<&str>) -> Option<CgroupFiles> {
        let unified = self.root.join("cgroup.controllers").is_file();
        let mut parents: Vec<String> = Vec::new();
        if let Some(parent) = cgroup_parent.map(|p| p.trim_matches('/')) {
            if !parent.is_empty() && !parent.contains("..") {
                parents.push(parent.to_owned());
            }
        }
        parents.extend(["docker".to_owned(), "system.slice".to_owned()]);
        let leaves = [
            container_id.to_owned(),
            format!("docker-{container_id}.scope"),
        ];
        for parent in &parents {
            for leaf in &leaves {
                let relative = Path::new(parent).join(leaf);
                if unified {
                    let dir = self.root.join(&relative);
                    if dir.join("cpu.stat").is_file() {
                        return Some(CgroupFiles::V2 { dir });
                    }
                } else {
                    let cpuacct = self.root.join("cpuacct").join(&relative);
                    let memory = self.root.join("memory").join(&relative);
                    if cpuacct.join("cpuacct.usage").is_file() {
                        return Some(CgroupFiles::V1 { cpuacct, memory });
                    }
                }
            }
        }
        None
    }
}

impl CgroupFiles {
    /// Read the counters now.
    pub fn read(&self) -> Result<CgroupCounters, CgroupError> {
        // The two layouts differ only in where the counters are and how CPU time is written.
        let (cpu_path, usage_path, stat_path) = match self {
            CgroupFiles::V2 { dir } => (
                dir.join("cpu.stat"),
                dir.join("memory.current"),
                dir.join("memory.stat"),
            ),
            CgroupFiles::V1 { cpuacct, memory } => (
                cpuacct.join("cpuacct.usage"),
                memory.join("memory.usage_in_bytes"),
                memory.join("memory.stat"),
            ),
        };
        let cpu_text = read(&cpu_path)?;
        let cpu_nanos = match self {
            CgroupFiles::V2 { .. } => parse_v2_cpu(&cpu_text),
            CgroupFiles::V1 { .. } => parse_number(&cpu_text),
        }
        .map_err(|d| format(&cpu_path, d))?;
        let usage = parse_number(&read(&usage_path)?).map_err(|d| format(&usage_path, d))?;
        let stats = parse_flat_keyed(&read(&stat_path)?);
        Ok(CgroupCounters {
            cpu_nanos,
            memory_used: memory_used(&MemoryFigures {
                usage: Some(usage),
                stats,
            }),
        })
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn format(path: &Path, detail: String) -> CgroupError {
    CgroupError::Format {
        path: path.display().to_string(),
        detail,
    }
}

/// A file holding one decimal number (`cpuacct.usage`, `memory.current`, ...).
pub fn parse_number(text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse::<u64>()
        .map_err(|_| format!("expected one number, found {:?}", truncate(text)))
}

/// A flat keyed file (`memory.stat`, `cpu.stat`): `key value` per line. Lines that do not
/// fit are skipped: kernels add keys over time.
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next()?;
            let value = fields.next()?.parse::<u64>().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// cgroup v2's `cpu.stat`: `usage_usec`, in nanoseconds.
pub fn parse_v2_cpu(text: &str) -> Result<u64, String> {
    parse_flat_keyed(text)
        .get("usage_usec")
        .map(|usec| usec.saturating_mul(1_000))
        .ok_or_else(|| "no usage_usec line".to_owned())
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A scratch directory under the system's temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "swarm-registry-cgroup-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const V2_CPU_STAT: &str = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
    const V2_MEMORY_STAT: &str =
        "anon 4096000\nfile 2048000\nkernel_stack 16384\nactive_file 1024000\ninactive_file 1000000\n";

    #[test]
    fn v2_systemd_layout_is_found_and_read() {
        let fs = Scratch::new("v2");
        fs.write("cgroup.controllers", "cpuset cpu io memory pids\n");
        let dir = "system.slice/docker-abc123.scope";
        fs.write(&format!("{dir}/cpu.stat"), V2_CPU_STAT);
        fs.write(&format!("{dir}/memory.current"), "7000000\n");
        fs.write(&format!("{dir}/memory.stat"), V2_MEMORY_STAT);
        let root = CgroupRoot::new(&fs.0);
        assert!(root.is_visible());
        let files = root.locate("abc123", None).unwrap();
        assert_eq!(
            files,
            CgroupFiles::V2 {
                dir: fs.0.join(dir)
            }
        );
        let counters = files.read().unwrap();
        assert_eq!(counters.cpu_nanos, 2_500_000_000);
        assert_eq!(counters.memory_used, 6_000_000, "minus inactive_file");
        assert_eq!(root.locate("other", None), None);
    }

    #[test]
    fn v2_cgroupfs_layout_with_a_custom_parent() {
        let fs = Scratch::new("v2parent");
        fs.write("cgroup.controllers", "cpu memory\n");
        fs.write("tenants/a/abc/cpu.stat", "usage_usec 10\n");
        fs.write("tenants/a/abc/memory.current", "100\n");
        fs.write("tenants/a/abc/memory.stat", "");
        let root = CgroupRoot::new(&fs.0);
        let files = root.locate("abc", Some("/tenants/a/")).unwrap();
        assert_eq!(
            files.read().unwrap(),
            CgroupCounters {
                cpu_nanos: 10_000,
                memory_used: 100
            }
        );
        assert_eq!(
            root.locate("abc", Some("../escape")),
            None,
            "a parent never leaves the root"
        );
    }

    #[test]
    fn v1_layout_is_found_and_read() {
        let fs = Scratch::new("v1");
        fs.write("cpuacct/docker/abc/cpuacct.usage", "123456789\n");
        fs.write("memory/docker/abc/memory.usage_in_bytes", "5000000\n");
        fs.write(
            "memory/docker/abc/memory.stat",
            "cache 3000000\nrss 2000000\ninactive_file 100\ntotal_inactive_file 1500000\n",
        );
        let root = CgroupRoot::new(&fs.0);
        assert!(root.is_visible());
        let counters = root.locate("abc", None).unwrap().read().unwrap();
        assert_eq!(counters.cpu_nanos, 123_456_789);
        assert_eq!(counters.memory_used, 3_500_000, "minus total_inactive_file");
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        let fs = Scratch::new("bad");
        fs.write("cpuacct/docker/abc/cpuacct.usage", "lots\n");
        let root = CgroupRoot::new(&fs.0);
        let err = root.locate("abc", None).unwrap().read().unwrap_err();
        assert!(err.to_string().contains("cpuacct.usage"), "{err}");
        assert!(err.to_string().contains("lots"), "{err}");
        fs.write("cpuacct/docker/abc/cpuacct.usage", "1\n");
        let err = root.locate("abc", None).unwrap().read().unwrap_err();
        assert!(
            matches!(err, CgroupError::Read { ref path, .. } if path.ends_with("memory.usage_in_bytes")),
            "{err}"
        );
        assert_eq!(
            parse_v2_cpu("user_usec 5\n"),
            Err("no usage_usec line".to_owned())
        );
        assert!(!CgroupRoot::new(fs.0.join("nothing")).is_visible());
    }
}
