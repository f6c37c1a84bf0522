//! SQLite's own page cache, with one page number spelled differently.
//!
//! When a b-tree page splits, SQLite renumbers the new pages into ascending order, swapping
//! two page numbers through a temporary one: the "pending byte" page, which no database ever
//! uses (page 1,048,577 with 1 KiB pages). The default page cache remembers the largest page
//! number it has held since it was last truncated, and every commit truncates the cache to
//! the database's size. Once that temporary has raised the mark past the hash table's span
//! (any database under 1 GiB), the truncation walks every bucket of the hash table, which
//! grows with the pages cached (up to 64 Mi of cache): a commit after a split paid a walk over
//! the whole cache. Measured at 30,000 deliveries/s with an 11 MB database: 3% of the
//! gateway's CPU, in `pcache1TruncateUnsafe`, growing with the cache (docs/benchmarks.md).
//!
//! This layer keeps the default cache and hands it key 0 (never a page number) wherever SQLite
//! names the pending-byte page, so the temporary never raises the mark. Everything else
//! passes straight through. It must be installed before SQLite initializes (the first
//! connection or VFS lookup in the process); [`install`] does that once, from
//! [`crate::embedded::connect`], and leaves the default in place if it is too late.

use rusqlite::ffi;
use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// SQLite's default `PENDING_BYTE` (only test builds of SQLite move it).
const PENDING_BYTE: c_uint = 0x4000_0000;

/// The default cache's methods, saved when the layer was installed.
struct DefaultCache(ffi::sqlite3_pcache_methods2);
// Function pointers and a null argument into SQLite's own static cache code.
unsafe impl Send for DefaultCache {}
unsafe impl Sync for DefaultCache {}

static DEFAULT: OnceLock<DefaultCache> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// How many times SQLite named the pending-byte page (for tests).
static RENAMED: AtomicU64 = AtomicU64::new(0);

/// One cache: the default cache's handle and the number that stands for the pending byte.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    pending: c_uint,
}

fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    &DEFAULT.get().expect("invariant: saved before install").0
}

unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*(p as *const Cache)
}

impl Cache {
    fn key(&self, key: c_uint) -> c_uint {
        if key == self.pending {
            RENAMED.fetch_add(1, Ordering::Relaxed);
            0
        } else {
            key
        }
    }
}

unsafe extern "C" fn x_create(
    sz_page: c_int,
    sz_extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(create) = methods().xCreate else {
        return std::ptr::null_mut();
    };
    let inner = create(sz_page, sz_extra, purgeable);
    if inner.is_null() || sz_page <= 0 {
        return inner;
    }
    let pending = PENDING_BYTE / sz_page as c_uint + 1;
    Box::into_raw(Box::new(Cache { inner, pending })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn x_cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(f) = methods().xCachesize {
        f(cache(p).inner, n)
    }
}

unsafe extern "C" fn x_pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    methods().xPagecount.map_or(0, |f| f(cache(p).inner))
}

unsafe extern "C" fn x_fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    methods()
        .xFetch
        .map_or(std::ptr::null_mut(), |f| f(c.inner, c.key(key), create))
}

unsafe extern "C" fn x_unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = methods().xUnpin {
        f(cache(p).inner, page, discard)
    }
}

unsafe extern "C" fn x_rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    if let Some(f) = methods().xRekey {
        f(c.inner, page, c.key(old), c.key(new))
    }
}

unsafe extern "C" fn x_truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    // Key 0 is below every limit SQLite truncates to, as page numbers start at 1; a page
    // holds that key only between two renames inside one b-tree balance.
    if let Some(f) = methods().xTruncate {
        f(cache(p).inner, limit)
    }
}

unsafe extern "C" fn x_destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    if let Some(f) = methods().xDestroy {
        f(c.inner)
    }
}

unsafe extern "C" fn x_shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = methods().xShrink {
        f(cache(p).inner)
    }
}

/// Installs the layer over the default page cache, once per process, if SQLite has not
/// initialized yet. Returns whether the layer is in place; without it SQLite works as usual,
/// only slower to commit.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| unsafe {
        let mut default: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
        if ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_GETPCACHE2,
            &mut default as *mut ffi::sqlite3_pcache_methods2,
        ) != ffi::SQLITE_OK
            || default.xCreate.is_none()
        {
            return false;
        }
        let mut ours = default;
        DEFAULT.get_or_init(|| DefaultCache(default));
        ours.xCreate = Some(x_create);
        ours.xCachesize = Some(x_cachesize);
        ours.xPagecount = Some(x_pagecount);
        ours.xFetch = Some(x_fetch);
        ours.xUnpin = Some(x_unpin);
        ours.xRekey = Some(x_rekey);
        ours.xTruncate = Some(x_truncate);
        ours.xDestroy = Some(x_destroy);
        ours.xShrink = Some(x_shrink);
        // SQLite copies the methods; `xInit`, `xShutdown` and `pArg` stay the default's.
        let rc = ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PCACHE2,
            &ours as *const ffi::sqlite3_pcache_methods2,
        );
        if rc != ffi::SQLITE_OK {
            tracing::warn!(
                rc,
                "SQLite initialized before the page-cache layer could be installed; \
                 commits after b-tree splits scan the whole page cache"
            );
        }
        rc == ffi::SQLITE_OK
    })
}

/// How many times SQLite has named the pending-byte page to the cache in this process.
pub fn renamed() -> u64 {
    RENAMED.load(Ordering::Relaxed)
}
