//! A thin SQLite VFS over the default one that gathers the write-ahead-log writes of a commit
//! into one `pwrite`.
//!
//! SQLite writes each page a commit touched to the log with two `pwrite` calls of its own (the
//! 24-byte frame header, then the page), then syncs. At 100,000 deliveries/s that was ~68,000
//! `pwrite` calls a second and a third of the store thread's time (docs/benchmarks.md). The log
//! is written strictly in order, so this layer keeps consecutive log writes in memory and
//! hands them to the real file in one call just before anything that must see them: the sync
//! that ends a commit, a read of that range, a size query, a truncation, a file control, or
//! close. Nothing changes for SQLite: a commit is durable when its sync returns, as before,
//! and frames become visible to other connections only through the shared index that SQLite
//! updates after the sync. Every other file (the database itself, the shared index) passes
//! straight through.
//!
//! The layer is registered once per process under [`NAME`] and used by naming it when a
//! connection is opened ([`crate::embedded::connect`]); it is never the default VFS.

use rusqlite::ffi;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The name connections open the layer by.
pub const NAME: &str = "corecast-wal";
const C_NAME: &CStr = c"corecast-wal";

/// A log write that would grow the pending run past this is written out first.
const MAX_PENDING: usize = 8 << 20;

/// Largest single write handed to the real VFS.
const WRITE_PIECE: usize = 64 << 10;

/// Our part of each open file. SQLite allocates `szOsFile` bytes per file: this header first,
/// then the real VFS's file at `real_offset()`.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The real file's methods (`None` until the real open succeeded).
    real_methods: *const ffi::sqlite3_io_methods,
    /// Only write-ahead-log files gather writes.
    wal: bool,
    /// Bytes written by SQLite but not yet handed to the real file, starting at `at`.
    pending: Vec<u8>,
    at: i64,
}

fn real_offset() -> usize {
    std::mem::size_of::<File>().next_multiple_of(16)
}

/// The real file inside our allocation.
unsafe fn real(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    (f as *mut u8).add(real_offset()) as *mut ffi::sqlite3_file
}

unsafe fn file<'a>(f: *mut ffi::sqlite3_file) -> &'a mut File {
    &mut *(f as *mut File)
}

unsafe fn methods<'a>(f: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*file(f).real_methods
}

/// Hands the pending run to the real file. The run is dropped either way: after a failed
/// write SQLite fails the transaction and writes its frames again.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    let this = file(f);
    if this.pending.is_empty() {
        return ffi::SQLITE_OK;
    }
    let pending = std::mem::take(&mut this.pending);
    let Some(write) = methods(f).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // The unix VFS writes at most 128 KiB per call (it masks larger sizes), so larger runs go
    // in 64 KiB pieces: still one call per 64 pages instead of two per page.
    let mut rc = ffi::SQLITE_OK;
    let mut at = this.at;
    for piece in pending.chunks(WRITE_PIECE) {
        rc = write(
            real(f),
            piece.as_ptr() as *const c_void,
            piece.len() as c_int,
            at,
        );
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += piece.len() as i64;
    }
    // Keep the allocation for the next commit.
    this.pending = pending;
    this.pending.clear();
    rc
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    let rc = flush(f);
    let close = methods(f).xClose;
    let rc2 = close.map_or(ffi::SQLITE_OK, |c| c(real(f)));
    std::ptr::drop_in_place(&mut file(f).pending);
    if rc != ffi::SQLITE_OK {
        rc
    } else {
        rc2
    }
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let this = file(f);
    let end = this.at + this.pending.len() as i64;
    if !this.pending.is_empty() && offset < end && offset + amount as i64 > this.at {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    match methods(f).xRead {
        Some(read) => read(real(f), buf, amount, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let this = file(f);
    if this.wal && amount > 0 {
        let end = this.at + this.pending.len() as i64;
        let follows = !this.pending.is_empty() && offset == end;
        if !follows || this.pending.len() + amount as usize > MAX_PENDING {
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let this = file(f);
        if this.pending.is_empty() {
            this.at = offset;
        }
        let bytes = std::slice::from_raw_parts(buf as *const u8, amount as usize);
        this.pending.extend_from_slice(bytes);
        return ffi::SQLITE_OK;
    }
    match methods(f).xWrite {
        Some(write) => write(real(f), buf, amount, offset),
        None => ffi::SQLITE_IOERR_WRITE,
    }
}

/// Forwards a call that must see every write made so far.
macro_rules! after_flush {
    ($f:expr, $method:ident, $fail:expr, $($arg:expr),*) => {{
        let rc = flush($f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match methods($f).$method {
            Some(m) => m(real($f) $(, $arg)*),
            None => $fail,
        }
    }};
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    after_flush!(f, xTruncate, ffi::SQLITE_IOERR, size)
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(f, xSync, ffi::SQLITE_IOERR, flags)
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    after_flush!(f, xFileSize, ffi::SQLITE_IOERR, size)
}

unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(f, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(f)
        .xLock
        .map_or(ffi::SQLITE_OK, |m| m(real(f), level))
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    methods(f)
        .xUnlock
        .map_or(ffi::SQLITE_OK, |m| m(real(f), level))
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    match methods(f).xCheckReservedLock {
        Some(m) => m(real(f), out),
        None => {
            *out = 0;
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    methods(f).xSectorSize.map_or(4096, |m| m(real(f)))
}

unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    methods(f).xDeviceCharacteristics.map_or(0, |m| m(real(f)))
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    match methods(f).xShmMap {
        Some(m) => m(real(f), region, size, extend, out),
        None => ffi::SQLITE_IOERR,
    }
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    methods(f)
        .xShmLock
        .map_or(ffi::SQLITE_IOERR, |m| m(real(f), offset, n, flags))
}

unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    if let Some(m) = methods(f).xShmBarrier {
        m(real(f))
    }
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    methods(f)
        .xShmUnmap
        .map_or(ffi::SQLITE_OK, |m| m(real(f), delete))
}

unsafe extern "C" fn x_fetch(
    f: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    match methods(f).xFetch {
        Some(m) => m(real(f), offset, amount, out),
        None => {
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_unfetch(f: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    methods(f)
        .xUnfetch
        .map_or(ffi::SQLITE_OK, |m| m(real(f), offset, p))
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};

/// The VFS this layer wraps (the process default when it was registered).
struct Vfs(*mut ffi::sqlite3_vfs);
// The wrapped VFS is a static object inside SQLite, safe to use from any thread.
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

static REAL: OnceLock<Vfs> = OnceLock::new();
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let _ = vfs;
    let Some(Vfs(real_vfs)) = REAL.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let real_vfs = *real_vfs;
    std::ptr::write(
        f as *mut File,
        File {
            base: ffi::sqlite3_file {
                pMethods: std::ptr::null(),
            },
            real_methods: std::ptr::null(),
            wal: flags & ffi::SQLITE_OPEN_WAL != 0,
            pending: Vec::new(),
            at: 0,
        },
    );
    let Some(open) = (*real_vfs).xOpen else {
        std::ptr::drop_in_place(&mut file(f).pending);
        return ffi::SQLITE_CANTOPEN;
    };
    let rc = open(real_vfs, name, real(f), flags, out_flags);
    let real_methods = (*real(f)).pMethods;
    if rc != ffi::SQLITE_OK || real_methods.is_null() {
        // SQLite calls no method, not even close, on a file whose open failed; the real
        // layer closed its own part already.
        std::ptr::drop_in_place(&mut file(f).pending);
        return rc;
    }
    let this = file(f);
    this.real_methods = real_methods;
    this.base.pMethods = &METHODS;
    ffi::SQLITE_OK
}

/// Registers the layer over the current default VFS (once per process).
pub fn register() -> Result<(), String> {
    REGISTERED
        .get_or_init(|| unsafe {
            let real_vfs = ffi::sqlite3_vfs_find(std::ptr::null());
            if real_vfs.is_null() {
                return Err("SQLite has no default VFS".into());
            }
            REAL.get_or_init(|| Vfs(real_vfs));
            let mut vfs: ffi::sqlite3_vfs = *real_vfs;
            vfs.zName = C_NAME.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.szOsFile = (real_offset() + (*real_vfs).szOsFile as usize) as c_int;
            vfs.xOpen = Some(x_open);
            // Every other method (and `pAppData`, which they may read) is the real VFS's own.
            let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
            match ffi::sqlite3_vfs_register(vfs, 0) {
                ffi::SQLITE_OK => Ok(()),
                rc => Err(format!(
                    "cannot register the {NAME} VFS (SQLite error {rc})"
                )),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open(path: &std::path::Path, vfs: Option<&str>) -> Connection {
        let c = match vfs {
            Some(v) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), v),
            None => Connection::open(path),
        }
        .unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = 100;",
        )
        .unwrap();
        c
    }

    /// A transaction far larger than the page cache (so SQLite spills pages to the log and
    /// reads them back before the commit) and than one pending run, then many small commits:
    /// everything reads back, through the layer and without it.
    #[test]
    fn large_and_small_commits_read_back_with_and_without_the_layer() {
        register().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            let c = open(&path, Some(NAME));
            c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
                .unwrap();
            c.execute_batch("BEGIN").unwrap();
            for k in 0..5_000i64 {
                let v = vec![(k % 251) as u8; 4_000];
                c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![k, v])
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
            for k in 5_000..5_500i64 {
                c.execute("INSERT INTO t VALUES (?1, zeroblob(10))", [k])
                    .unwrap();
            }
            let n: i64 = c
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 5_500);
        }
        let c = open(&path, None);
        let (n, total): (i64, i64) = c
            .query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, total), (5_500, 5_000 * 4_000 + 500 * 10));
        let v: Vec<u8> = c
            .query_row("SELECT v FROM t WHERE k = 4321", [], |r| r.get(0))
            .unwrap();
        assert!(v.iter().all(|&b| b == (4321 % 251) as u8));
    }
}
