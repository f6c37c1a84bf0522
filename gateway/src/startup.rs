//! Checks the kernel and process limits glommio needs before any shard starts, and says
//! exactly what to change when they are not met.

use crate::error::{Error, Result};

/// The oldest kernel glommio's io_uring use supports.
const MIN_KERNEL: (u32, u32) = (5, 8);
/// Locked memory each shard's io_uring rings need, roughly (glommio's default rings).
const MEMLOCK_PER_SHARD: u64 = 512 << 10;

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Refuses to start on kernels without io_uring features glommio needs, or with too little
/// locked memory; returns a message naming the fix.
pub fn check_io_uring(nr_shards: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let memlock = (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur);
    match io_uring_problem(kernel_version(), memlock, is_root(), nr_shards) {
        Some(problem) => Err(Error::Kernel(problem)),
        None => Ok(()),
    }
}

/// The decision of [`check_io_uring`], sans-IO: the kernel version, the locked-memory limit in
/// bytes (`None` = unlimited), whether we run as root (root is not bound by the limit), and
/// the number of shards.
pub fn io_uring_problem(
    kernel: Option<(u32, u32)>,
    memlock: Option<u64>,
    root: bool,
    nr_shards: usize,
) -> Option<String> {
    if let Some(v) = kernel {
        if v < MIN_KERNEL {
            return Some(format!(
                "corecast needs Linux {}.{} or newer for io_uring (glommio); this kernel is {}.{}. \
                 Upgrade the kernel.",
                MIN_KERNEL.0, MIN_KERNEL.1, v.0, v.1
            ));
        }
    }
    let needed = MEMLOCK_PER_SHARD * nr_shards as u64;
    // Kernels from 5.12 charge io_uring memory to the cgroup instead of RLIMIT_MEMLOCK.
    let charged_to_memlock = kernel.is_none_or(|v| v < (5, 12));
    match memlock {
        Some(limit) if limit < needed && !root && charged_to_memlock => Some(format!(
            "the locked-memory limit is {} KiB but {} shards need about {} KiB for io_uring. \
             Raise it: `ulimit -l unlimited` (or LimitMEMLOCK=infinity in the systemd unit, or a \
             memlock line in /etc/security/limits.conf), or use fewer shards \
             (--shards / CORECAST_SHARDS).",
            limit / 1024,
            nr_shards,
            needed / 1024
        )),
        _ => None,
    }
}

/// Raises the open-files soft limit to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: raised is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// One shard per online core.
pub fn online_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_kernels_and_low_memlock_are_refused_with_the_fix() {
        let old = io_uring_problem(Some((5, 4)), None, true, 2).unwrap();
        assert!(old.contains("5.8") && old.contains("5.4"), "{old}");
        let low = io_uring_problem(Some((5, 10)), Some(64 << 10), false, 4).unwrap();
        assert!(
            low.contains("ulimit -l unlimited") && low.contains("64 KiB"),
            "{low}"
        );
        assert_eq!(
            io_uring_problem(Some((5, 10)), Some(64 << 10), true, 4),
            None,
            "root"
        );
        assert_eq!(
            io_uring_problem(Some((6, 1)), Some(64 << 10), false, 4),
            None,
            "cgroup"
        );
        assert_eq!(
            io_uring_problem(Some((5, 10)), None, false, 4),
            None,
            "unlimited"
        );
    }
}
