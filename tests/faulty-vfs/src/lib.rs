//! An SQLite VFS that fails chosen reads with `SQLITE_IOERR_READ`, the way
//! a failing SD card or a resetting card reader does, so tests can show
//! what code reading a damaged database does with real I/O errors.
//!
//! Test support only: nothing outside `[dev-dependencies]` may use it.
//!
//! [`arm`] installs the VFS as SQLite's default (once per process) and
//! arms faults **for the calling thread**: only a main database file opened
//! on that thread, whose path contains [`ReadFaults::path_contains`], gets
//! the faulty read; every other file, on every thread, is the default VFS's
//! own, untouched (the wrapper only forwards `xOpen`). Tests running in
//! parallel on other threads are not affected.
//!
//! A failed read is not cached by SQLite, so a page whose faults run out
//! reads normally the next time, as a sector that read at the third try
//! does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rusqlite::ffi;

/// What to fail.
#[derive(Debug, Clone, Default)]
pub struct ReadFaults {
    /// Only main database files whose path contains this.
    pub path_contains: String,
    /// The database's page size: reads are mapped to pages by offset.
    pub page_size: u64,
    /// Page number (0-based: page 0 holds the header) → how many reads of
    /// it fail; [`ALWAYS`] for every read.
    pub pages: HashMap<u64, u32>,
    /// Every read of the file fails for a while once the listed pages have
    /// failed this many times in all: a card reader resetting.
    pub burst: Option<Burst>,
}

/// Failures of a page that never reads.
pub const ALWAYS: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// After this many failures of the listed pages…
    pub after_failures: u32,
    /// …every read fails for this long.
    pub lasting: Duration,
}

/// What happened while armed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Reads failed because their page is listed.
    pub listed: u64,
    /// Reads failed during a burst.
    pub in_burst: u64,
}

struct State {
    faults: ReadFaults,
    counts: Counts,
    burst_until: Option<Instant>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Faults stay armed on this thread until it is dropped.
#[must_use = "the faults are disarmed when the guard is dropped"]
pub struct Armed(());

impl Armed {
    /// The failures so far.
    pub fn counts(&self) -> Counts {
        STATE.with(|s| s.borrow().as_ref().map(|s| s.counts).unwrap_or_default())
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = None);
    }
}

/// Arms `faults` for databases opened and read on this thread.
///
/// # Panics
/// If SQLite has no default VFS to wrap or refuses to register this one:
/// a test that asked for I/O errors must not run without them.
pub fn arm(faults: ReadFaults) -> Armed {
    assert!(faults.page_size > 0, "page_size is required");
    if let Err(rc) = install() {
        panic!("the faulty VFS could not be installed: SQLite error {rc}");
    }
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            faults,
            counts: Counts::default(),
            burst_until: None,
        })
    });
    Armed(())
}

/// The default VFS this one forwards to, as an address (a raw pointer is
/// not `Sync`).
static REAL_VFS: OnceLock<Result<usize, c_int>> = OnceLock::new();
type Read =
    unsafe extern "C" fn(*mut ffi::sqlite3_file, *mut c_void, c_int, ffi::sqlite3_int64) -> c_int;
/// The real file methods the first faulty file had, and the copy of them
/// with `xRead` replaced.
static METHODS: OnceLock<(usize, usize, Read)> = OnceLock::new();

fn install() -> Result<(), c_int> {
    let installed = REAL_VFS.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe
        // in SQLite's default (serialized) build. The registered struct is
        // leaked, so it outlives every connection, as SQLite requires.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let mut vfs = *real;
            vfs.zName = c"storelink-faulty".as_ptr();
            vfs.pNext = std::ptr::null_mut();
            // Every other method is the default VFS's own: SQLite's unix
            // VFS reads `pAppData` only in xOpen, which gets the real VFS.
            vfs.xOpen = Some(open);
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 1);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            Ok(real as usize)
        }
    });
    installed.map(|_| ())
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Ok(real)) = REAL_VFS.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let real = *real as *mut ffi::sqlite3_vfs;
    // SAFETY: `real` is the default VFS found at install, which SQLite
    // never frees; the arguments are SQLite's own, passed on unchanged.
    let rc = unsafe {
        match (*real).xOpen {
            Some(real_open) => real_open(real, name, file, flags, out_flags),
            None => return ffi::SQLITE_CANTOPEN,
        }
    };
    if rc != ffi::SQLITE_OK || flags & ffi::SQLITE_OPEN_MAIN_DB == 0 || name.is_null() {
        return rc;
    }
    // SAFETY: a non-null name from SQLite is a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name as *const c_char) }.to_string_lossy();
    let wanted = STATE.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|st| path.contains(&st.faults.path_contains))
    });
    if !wanted {
        return rc;
    }
    // SAFETY: the real xOpen succeeded, so `file` holds its methods. The
    // replacement table is a copy of them, leaked so it outlives the file;
    // it is used only for files whose methods are the ones copied.
    unsafe {
        let methods = (*file).pMethods;
        let Some(real_read) = methods.as_ref().and_then(|m| m.xRead) else {
            return rc;
        };
        let &(copied_from, faulty, _) = METHODS.get_or_init(|| {
            let mut copy = *methods;
            copy.xRead = Some(read);
            (
                methods as usize,
                Box::leak(Box::new(copy)) as *const ffi::sqlite3_io_methods as usize,
                real_read,
            )
        });
        if copied_from == methods as usize {
            (*file).pMethods = faulty as *const ffi::sqlite3_io_methods;
        }
    }
    rc
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if should_fail(offset) {
        return ffi::SQLITE_IOERR_READ;
    }
    match METHODS.get() {
        // SAFETY: the real read of the file's own methods, on its arguments.
        Some(&(_, _, real_read)) => unsafe { real_read(file, buf, amount, offset) },
        None => ffi::SQLITE_IOERR_READ,
    }
}

/// Whether the read at `offset` fails, on the faults armed on this thread
/// (none: it reads).
fn should_fail(offset: i64) -> bool {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(st) = s.as_mut() else {
            return false;
        };
        let now = Instant::now();
        if st.burst_until.is_some_and(|until| now < until) {
            st.counts.in_burst += 1;
            return true;
        }
        let page = u64::try_from(offset).unwrap_or(0) / st.faults.page_size;
        let Some(left) = st.faults.pages.get_mut(&page) else {
            return false;
        };
        if *left == 0 {
            return false;
        }
        if *left != ALWAYS {
            *left -= 1;
        }
        st.counts.listed += 1;
        if let Some(b) = st.faults.burst {
            if st.counts.listed == u64::from(b.after_failures) {
                st.burst_until = Some(now + b.lasting);
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, ErrorCode, OpenFlags};

    fn db(dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("data.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA page_size = 4096; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
        )
        .expect("schema");
        for i in 0..200 {
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(1500))", [i])
                .expect("insert");
        }
        path
    }

    fn sum(path: &std::path::Path) -> rusqlite::Result<i64> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
    }

    #[test]
    fn a_listed_page_fails_as_often_as_asked_then_reads() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(dir.path());
        let faults = arm(ReadFaults {
            path_contains: "data.db".into(),
            page_size: 4096,
            pages: HashMap::from([(5, 2)]),
            burst: None,
        });
        for _ in 0..2 {
            let e = sum(&path).expect_err("page 5 fails");
            assert_eq!(
                e.sqlite_error_code(),
                Some(ErrorCode::SystemIoFailure),
                "{e}"
            );
        }
        assert_eq!(sum(&path).expect("reads again"), 200 * 1500);
        assert_eq!(faults.counts().listed, 2);
        drop(faults);
    }

    #[test]
    fn other_files_and_unarmed_threads_read_normally() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(dir.path());
        let _faults = arm(ReadFaults {
            path_contains: "another-name".into(),
            page_size: 4096,
            pages: HashMap::from([(5, ALWAYS)]),
            burst: None,
        });
        assert_eq!(sum(&path).expect("not the armed name"), 200 * 1500);
        let _on_path = arm(ReadFaults {
            path_contains: "data.db".into(),
            page_size: 4096,
            pages: HashMap::from([(5, ALWAYS)]),
            burst: None,
        });
        let elsewhere = path.clone();
        let other = std::thread::spawn(move || sum(&elsewhere));
        assert_eq!(
            other.join().expect("thread").expect("unarmed thread"),
            200 * 1500
        );
        assert!(sum(&path).is_err());
    }

    #[test]
    fn a_burst_fails_every_read_for_its_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = db(dir.path());
        let faults = arm(ReadFaults {
            path_contains: "data.db".into(),
            page_size: 4096,
            pages: HashMap::from([(5, 1)]),
            burst: Some(Burst {
                after_failures: 1,
                lasting: Duration::from_millis(300),
            }),
        });
        assert!(sum(&path).is_err());
        assert!(sum(&path).is_err(), "in the burst");
        assert!(faults.counts().in_burst >= 1);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(sum(&path).expect("after it"), 200 * 1500);
    }
}
