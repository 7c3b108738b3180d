//! Keeping the server and the load generator on different CPUs for one scenario.
//!
//! The watch fan-out scenario measures how fast a server delivers events. On a shared machine
//! the generator's decoding of those events takes CPU from the server, so the events/s it shows
//! is partly the generator's. During that scenario the server's threads run on the first CPU
//! this process may use and the generator's (this process, and the Go generator it starts) on
//! the others; both servers get the same split. The previous affinity is restored afterwards.

use std::fs;
use std::io;

/// The CPUs a set of threads may run on.
#[derive(Clone)]
struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    fn empty() -> Self {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        Self(unsafe { std::mem::zeroed() })
    }

    fn of_this_process() -> io::Result<Self> {
        let mut set = Self::empty();
        // SAFETY: the pointer and size describe `set.0`, which outlives the call.
        let rc = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set.0)
        };
        if rc == 0 {
            Ok(set)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: the index is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    fn of(cpus: &[usize]) -> Self {
        let mut set = Self::empty();
        for &c in cpus {
            // SAFETY: the cpus come from `cpus()`, so each is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(c, &mut set.0) };
        }
        set
    }

    /// Applies the set to every thread of process `pid` (0: this process). Threads started
    /// later inherit it from the thread that starts them.
    fn apply_to_process(&self, pid: u32) -> io::Result<()> {
        let dir = if pid == 0 {
            "/proc/self/task".to_string()
        } else {
            format!("/proc/{pid}/task")
        };
        let mut applied = 0;
        for entry in fs::read_dir(dir)? {
            let Ok(tid) = entry?.file_name().to_string_lossy().parse::<libc::pid_t>() else {
                continue;
            };
            // SAFETY: the pointer and size describe `self.0`; an exited thread gives ESRCH.
            let rc = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &self.0)
            };
            if rc == 0 {
                applied += 1;
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
        if applied == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no thread of process {pid} to place"),
            ));
        }
        Ok(())
    }
}

/// The server on one CPU, this process on the rest, until dropped.
pub struct CpuSplit {
    server_pid: u32,
    before: CpuSet,
    /// For the report: "server on CPU 0, load generator on CPU 1".
    pub description: String,
}

impl CpuSplit {
    /// Splits the CPUs this process may use between the server `server_pid` (the first) and
    /// this process (the others). An error when there is only one CPU or the kernel refuses.
    pub fn start(server_pid: u32) -> Result<Self, String> {
        let before = CpuSet::of_this_process().map_err(|e| format!("sched_getaffinity: {e}"))?;
        let cpus = before.cpus();
        let Some((&server_cpu, generator_cpus)) = cpus.split_first() else {
            return Err("no CPU in this process's affinity".into());
        };
        if generator_cpus.is_empty() {
            return Err("only one CPU: the server and the load generator share it".into());
        }
        let split = Self {
            server_pid,
            before: before.clone(),
            description: format!(
                "server on CPU {server_cpu}, load generator on CPU {}",
                list(generator_cpus)
            ),
        };
        CpuSet::of(&[server_cpu])
            .apply_to_process(server_pid)
            .and_then(|()| CpuSet::of(generator_cpus).apply_to_process(0))
            .map_err(|e| format!("sched_setaffinity: {e}"))?;
        Ok(split)
    }
}

impl Drop for CpuSplit {
    fn drop(&mut self) {
        // Best effort: a server that exited meanwhile has no threads left to restore.
        let _ = self.before.apply_to_process(self.server_pid);
        let _ = self.before.apply_to_process(0);
    }
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs `/proc/<task>/status` allows, e.g. "0-1" or "0,2".
    fn allowed(task: &str) -> Vec<usize> {
        let status = fs::read_to_string(format!("/proc/{task}/status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let mut cpus = Vec::new();
        for part in list.trim().split(',') {
            match part.split_once('-') {
                Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
                None => cpus.push(part.parse().unwrap()),
            }
        }
        cpus
    }

    /// A child process stands in for the server: it gets the first CPU, every thread of this
    /// process the others, and both get their old sets back on drop.
    #[test]
    fn the_split_places_both_processes_and_is_undone() {
        let all = CpuSet::of_this_process().unwrap().cpus();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let server = pid.to_string();
        let result = CpuSplit::start(pid);
        if all.len() < 2 {
            assert!(result.is_err(), "one CPU cannot be split");
        } else {
            let split = result.unwrap();
            assert_eq!(allowed(&server), vec![all[0]]);
            for entry in fs::read_dir("/proc/self/task").unwrap() {
                let tid = entry.unwrap().file_name().to_string_lossy().to_string();
                assert_eq!(
                    allowed(&format!("self/task/{tid}")),
                    all[1..],
                    "thread {tid}"
                );
            }
            let inherited = std::thread::spawn(|| CpuSet::of_this_process().unwrap().cpus())
                .join()
                .unwrap();
            assert_eq!(inherited, all[1..], "a thread started during the split");
            drop(split);
            assert_eq!(CpuSet::of_this_process().unwrap().cpus(), all);
            assert_eq!(allowed(&server), all, "the server's CPUs were not restored");
        }
        child.kill().unwrap();
        let _ = child.wait();
    }
}
