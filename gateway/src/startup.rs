//! Checks the kernel and process limits glommio needs before any shard starts, and says
//! exactly what to change when they are not met.

use anyhow::{bail, Result};

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
    match kernel_version() {
        Some(v) if v < MIN_KERNEL => bail!(
            "corecast needs Linux {}.{} or newer for io_uring (glommio); this kernel is {}.{}. \
             Upgrade the kernel.",
            MIN_KERNEL.0,
            MIN_KERNEL.1,
            v.0,
            v.1
        ),
        _ => {}
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let needed = MEMLOCK_PER_SHARD * nr_shards as u64;
    if rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < needed && !is_root() {
        // Kernels from 5.12 account io_uring memory to the cgroup instead; older ones need this.
        let newer_accounting = kernel_version().is_some_and(|v| v >= (5, 12));
        if !newer_accounting {
            bail!(
                "locked memory limit is {} KiB but {} shards need about {} KiB for io_uring. \
                 Raise it: `ulimit -l unlimited` (or LimitMEMLOCK=infinity in the systemd unit, \
                 or a memlock line in /etc/security/limits.conf), or use fewer shards \
                 (--shards / CORECAST_SHARDS).",
                lim.rlim_cur / 1024,
                nr_shards,
                needed / 1024
            );
        }
    }
    Ok(())
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

/// Explains a failure to create a glommio executor (the usual causes are io_uring being
/// disabled or locked memory).
pub fn explain_executor_error(err: &dyn std::fmt::Display) -> String {
    format!(
        "cannot start a glommio executor (io_uring): {err}. Check that io_uring is enabled \
         (sysctl kernel.io_uring_disabled must be 0; containers may block io_uring_setup in \
         their seccomp profile) and that the locked-memory limit is high enough \
         (`ulimit -l unlimited`)."
    )
}
