//! Process-wide probes for the hostile and conservation tests: memory,
//! open sockets, panics outside the tests, and a lock that lets a test
//! measuring them run alone.

/// This process's resident set size in KiB (`VmRSS` of
/// `/proc/self/status`), or `None` where that file does not exist.
///
/// The server runs inside the test process, so growth of this figure is
/// growth of the server's (and the test clients') memory.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Taken exclusively ([`alone`]) by tests that measure process-wide
/// figures (memory, open files) or load both cores, and shared
/// ([`beside_others`]) by the other tests of the same binary.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Waits until no other test of this binary that takes [`alone`] or
/// [`beside_others`] runs, and keeps it so while the guard lives.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    SERIAL.write().await
}

/// Runs beside other tests, but never beside one that runs [`alone`].
pub async fn beside_others() -> tokio::sync::RwLockReadGuard<'static, ()> {
    SERIAL.read().await
}

/// How many sockets other than Unix sockets this process has open (Linux),
/// to detect sockets that outlive their connection. Unix sockets come and go
/// with the runtimes of other tests (tokio's signal driver holds one) and
/// are not counted; a leaked TCP socket is, even once the connection is
/// closed and gone from `/proc/net/tcp`.
pub fn open_sockets() -> Option<usize> {
    let unix = std::fs::read_to_string("/proc/self/net/unix").ok()?;
    // Columns: Num RefCount Protocol Flags Type St Inode [Path]
    let unix_inodes: std::collections::HashSet<String> = unix
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6))
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    let open = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:") && !unix_inodes.contains(target))
        .count();
    Some(open)
}

/// Panics whose location is outside the test files: a bug in the library
/// (or a dependency), even when caught by the server's panic guard.
static LIBRARY_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts counting panics raised outside `tests/` (the default hook still
/// prints them). Deliberate panics in test handlers and failed assertions
/// are located in `tests/` and are not counted. Idempotent.
pub fn watch_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"));
            if !in_tests {
                LIBRARY_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Asserts that no panic outside `tests/` happened since [`watch_panics`].
pub fn assert_no_library_panic() {
    let n = LIBRARY_PANICS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 0, "{n} panic(s) outside the tests (see stderr)");
}
