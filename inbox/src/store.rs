//! SQLite storage: one writer thread that commits in batches, a pool of
//! read connections, an FTS5 index, pruning to the newest N messages.
//!
//! Why one writer thread: SQLite allows one writer at a time. Funnelling
//! every write (new messages, read marks, deletes) through one thread that
//! drains its queue into one transaction gives group commit for free — under
//! load one `COMMIT` covers hundreds of messages — and no `SQLITE_BUSY`.
//! A message's sender is answered only after the commit that holds it, so
//! `250` is never sent for a message that is not stored and searchable.
//!
//! Durability, the trade-off of a test inbox (Mailpit, too, favours speed):
//! WAL with `synchronous = NORMAL`, so a commit is written to the WAL but
//! not `fsync`ed. An acknowledged message survives the inbox crashing or
//! being killed (the bytes are in the kernel), but a power loss or kernel
//! crash can lose the commits made since the last checkpoint. Checkpoints
//! (which do `fsync`) run on their own thread, at most once a second, so
//! that the writer does not wait for them; the writer finishes one itself
//! only when the WAL has grown past 256 MiB (see `checkpointer`).
//!
//! Raw sources are packed (LZ4) on the caller's task when that saves an
//! eighth of their size, and unpacked when read (see `packed`): they were
//! most of the pages each commit wrote.
//!
//! The totals live in a one-row `counts` table updated in the same
//! transaction as every change, so `total`/`unread` never need a
//! `count(*)` over 100,000 rows, and a search reads them from its own
//! snapshot.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::search::{AddressField, Index, Plan, Query, address_tokens};

/// How many queued writes one transaction takes at most.
const MAX_BATCH: usize = 1024;

/// An error from the database, as text (it ends up in a log or a 4xx reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// One mailbox in Mailpit's JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Address {
    /// The display name (may be empty).
    #[serde(rename = "Name")]
    pub name: String,
    /// The address (may be empty when the header held only a name).
    #[serde(rename = "Address")]
    pub address: String,
}

/// A message ready to be stored: the raw bytes and what the list, the
/// search index and the summaries need, extracted once at ingest.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Milliseconds since the Unix epoch when it was received.
    pub created_ms: i64,
    /// The `Message-ID` header, without angle brackets.
    pub message_id: String,
    /// The decoded subject.
    pub subject: String,
    /// The first `From` mailbox.
    pub from: Option<Address>,
    /// `To` mailboxes.
    pub to: Vec<Address>,
    /// `Cc` mailboxes.
    pub cc: Vec<Address>,
    /// `Bcc` header mailboxes plus envelope recipients named in no header.
    pub bcc: Vec<Address>,
    /// `Reply-To` mailboxes.
    pub reply_to: Vec<Address>,
    /// The envelope sender (`MAIL FROM`), empty for the null sender.
    pub return_path: String,
    /// Number of attachments (not inline parts).
    pub attachments: u32,
    /// Up to 250 characters of the text body.
    pub snippet: String,
    /// The text body (or text converted from HTML) for the search index.
    pub body: String,
    /// The message as received, byte for byte.
    pub raw: Bytes,
}

/// A message in a list (Mailpit's `MessageSummary`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Summary {
    /// Database ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The `Message-ID` header.
    #[serde(rename = "MessageID")]
    pub message_id: String,
    /// Read status.
    pub read: bool,
    /// The first `From` mailbox.
    pub from: Option<Address>,
    /// `To` mailboxes.
    pub to: Vec<Address>,
    /// `Cc` mailboxes.
    pub cc: Vec<Address>,
    /// `Bcc` mailboxes.
    pub bcc: Vec<Address>,
    /// `Reply-To` mailboxes.
    pub reply_to: Vec<Address>,
    /// Subject.
    pub subject: String,
    /// When it was received (RFC 3339, UTC).
    pub created: String,
    /// Tags (always empty: tags are not implemented).
    pub tags: Vec<String>,
    /// Size of the raw message in bytes.
    pub size: u64,
    /// Number of attachments.
    pub attachments: u32,
    /// Up to 250 characters of the text body.
    pub snippet: String,
}

/// A stored message's raw bytes and the facts kept beside them.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Database ID.
    pub id: String,
    /// Received time, ms since the epoch.
    pub created_ms: i64,
    /// The envelope sender.
    pub return_path: String,
    /// The message as received.
    pub raw: Bytes,
}

/// Which messages a write applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every message.
    All,
    /// These IDs (unknown ones are ignored).
    Ids(Vec<String>),
    /// Messages matching a search.
    Search(Query),
}

/// What changed, for live updates.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message was stored.
    New(Box<Summary>),
    /// Messages were deleted, pruned or marked read/unread.
    Changed,
}

/// Message totals, kept current by the writer after each commit.
#[derive(Debug, Default)]
pub struct Stats {
    total: AtomicU64,
    unread: AtomicU64,
}

impl Stats {
    /// (total, unread).
    pub fn get(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.unread.load(Ordering::Relaxed),
        )
    }
}

enum Write {
    Insert(Box<Row>, oneshot::Sender<Result<(), StoreError>>),
    SetRead(Selection, bool, oneshot::Sender<Result<usize, StoreError>>),
    Delete(Selection, oneshot::Sender<Result<usize, StoreError>>),
    /// Commit what came before, then stop.
    Stop,
}

/// The message store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writes: mpsc::Sender<Write>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    stats: Arc<Stats>,
    events: broadcast::Sender<Event>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    search_cache: Arc<SearchCache>,
    /// Keeps a temporary database's directory until the store is dropped.
    _temp: Option<tempfile::TempDir>,
}

impl Store {
    /// Opens (or creates) the database at `path`, or a temporary one that
    /// is removed when the store is dropped. Keeps at most `max` messages
    /// (0: no limit).
    pub fn open(path: Option<&Path>, max: usize) -> Result<Store, StoreError> {
        let (path, temp) = match path {
            Some(p) => (p.to_owned(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("smtpsrv-inbox-")
                    .tempdir()
                    .map_err(|e| StoreError(format!("temporary directory: {e}")))?;
                (dir.path().join("inbox.db"), Some(dir))
            }
        };
        let conn = Connection::open(&path)?;
        init_schema(&conn)?;
        // Checkpoints run on their own thread (see `checkpointer`).
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        let stats = Arc::new(Stats::default());
        let (total, unread) = load_counts(&conn, &stats)?;
        let checkpoints = Connection::open(&path)?;
        let (checkpoint, wake) = std::sync::mpsc::sync_channel(1);
        let wal_long = Arc::new(AtomicBool::new(false));
        let long = wal_long.clone();
        thread::Builder::new()
            .name("inbox-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, wake, long))
            .map_err(|e| StoreError(format!("checkpoint thread: {e}")))?;
        let (events, _) = broadcast::channel(1024);
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        let writer = Writer {
            conn,
            max,
            stats: stats.clone(),
            events: events.clone(),
            checkpoint,
            wal_long,
            total,
            unread,
        };
        let handle = thread::Builder::new()
            .name("inbox-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError(format!("writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writes,
                readers: Mutex::new(Vec::new()),
                path,
                stats,
                events,
                writer: Mutex::new(Some(handle)),
                search_cache: Arc::default(),
                _temp: temp,
            }),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// (total, unread) message counts.
    pub fn stats(&self) -> (u64, u64) {
        self.inner.stats.get()
    }

    /// Live updates: every commit that changed something.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Stores a message; resolves once it is committed (and indexed).
    ///
    /// Everything but the SQL (the ID, the JSON columns, the index text,
    /// the summary) is prepared here, on the caller's task, so that the one
    /// writer thread does nothing but write.
    pub async fn insert(&self, message: NewMessage) -> Result<Summary, StoreError> {
        let row = Row::new(message);
        let summary = row.summary();
        let (tx, rx) = oneshot::channel();
        self.write(Write::Insert(Box::new(row), tx)).await?;
        rx.await.map_err(|_| stopped())??;
        let _ = self
            .inner
            .events
            .send(Event::New(Box::new(summary.clone())));
        Ok(summary)
    }

    /// Marks messages read or unread; returns how many changed.
    pub async fn set_read(&self, which: Selection, read: bool) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.write(Write::SetRead(which, read, tx)).await?;
        rx.await.map_err(|_| stopped())?
    }

    /// Deletes messages; returns how many were deleted.
    pub async fn delete(&self, which: Selection) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.write(Write::Delete(which, tx)).await?;
        rx.await.map_err(|_| stopped())?
    }

    async fn write(&self, w: Write) -> Result<(), StoreError> {
        self.inner.writes.send(w).await.map_err(|_| stopped())
    }

    /// The newest messages, skipping `start`.
    pub async fn list(&self, start: u64, limit: u64) -> Result<Vec<Summary>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {SUMMARY} FROM messages ORDER BY id DESC LIMIT ?1 OFFSET ?2"
            ))?;
            let rows = st.query_map(params![clamp(limit), clamp(start)], summary_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Messages matching `query`, newest first (skipping `start`, at most
    /// `limit`), with how many match in all and how many of those are unread.
    ///
    /// Everything is read in one snapshot. A query made of words only (the
    /// usual case) evaluates the FTS5 index once: the matching rowids come
    /// back in order, their number is the count and the page is a slice of
    /// them, so a search matching all 100,000 messages costs one pass over
    /// the index, not one for the page and one for each count.
    pub async fn search(
        &self,
        query: Query,
        start: u64,
        limit: u64,
    ) -> Result<SearchPage, StoreError> {
        let cache = self.inner.search_cache.clone();
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            let page = match query.fts_only() {
                Some(plan) => search_fts(&tx, &cache, &plan, start, limit)?,
                None => search_sql(&tx, &query, start, limit)?,
            };
            Ok(page)
        })
        .await
    }

    /// One message by ID, or the newest for `latest`.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = if id == "latest" {
                "SELECT m.uid, m.created, m.return_path, r.data, r.packed, m.size \
                 FROM messages m JOIN raw r ON r.id = m.id ORDER BY m.id DESC LIMIT 1"
            } else {
                "SELECT m.uid, m.created, m.return_path, r.data, r.packed, m.size \
                 FROM messages m JOIN raw r ON r.id = m.id WHERE m.uid = ?1"
            };
            let mut st = c.prepare_cached(sql)?;
            let row = st
                .query_row(
                    rusqlite::params_from_iter((id != "latest").then_some(&id)),
                    |r| {
                        let stored = Stored {
                            id: r.get(0)?,
                            created_ms: r.get(1)?,
                            return_path: r.get(2)?,
                            raw: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                        };
                        Ok((stored, r.get::<_, bool>(4)?, r.get::<_, i64>(5)?))
                    },
                )
                .optional()?;
            let Some((mut stored, packed, size)) = row else {
                return Ok(None);
            };
            if packed {
                let raw = crate::packed::unpack(&stored.raw, size.max(0) as usize)
                    .map_err(|e| StoreError(format!("message {}: {e}", stored.id)))?;
                stored.raw = Bytes::from(raw);
            }
            Ok(Some(stored))
        })
        .await
    }

    /// One message's summary (read status included).
    pub async fn summary(&self, id: &str) -> Result<Option<Summary>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {SUMMARY} FROM messages WHERE uid = ?1"))?;
            Ok(st.query_row([&id], summary_row).optional()?)
        })
        .await
    }

    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().map_err(|_| stopped())?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError(format!("read task: {e}")))?
    }

    /// Stops the writer after the writes already queued, and waits for it.
    /// Later writes fail with "shut down".
    pub async fn close(&self) {
        let _ = self.inner.writes.send(Write::Stop).await;
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn stopped() -> StoreError {
    StoreError("the store is shut down".into())
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A page of search results and the counts over all matches.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// The page, newest first.
    pub messages: Vec<Summary>,
    /// How many messages match (Mailpit's `messages_count`).
    pub matching: u64,
    /// How many matching messages are unread (Mailpit's `messages_unread`).
    pub unread: u64,
}

/// The matches of the last few word-only searches, each valid for the
/// snapshot (`counts.generation`) it was computed in: a UI or a CI helper
/// that asks the same question again before anything changed gets the page
/// without another pass over the index. Any commit makes them stale.
#[derive(Default)]
struct SearchCache {
    entries: Mutex<Vec<Cached>>,
}

struct Cached {
    expression: String,
    generation: i64,
    ids: Arc<Vec<i64>>,
    unread: u64,
}

/// Entries kept (each holds the rowids of its matches: 8 bytes a match).
const SEARCH_CACHE_ENTRIES: usize = 4;

impl SearchCache {
    fn get(&self, expression: &str, generation: i64) -> Option<(Arc<Vec<i64>>, u64)> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .find(|e| e.generation == generation && e.expression == expression)
            .map(|e| (e.ids.clone(), e.unread))
    }

    fn put(&self, entry: Cached) {
        if let Ok(mut entries) = self.entries.lock() {
            entries
                .retain(|e| e.generation == entry.generation && e.expression != entry.expression);
            if entries.len() >= SEARCH_CACHE_ENTRIES {
                entries.remove(0);
            }
            entries.push(entry);
        }
    }
}

fn search_fts(
    c: &Connection,
    cache: &SearchCache,
    plan: &Plan,
    start: u64,
    limit: u64,
) -> Result<SearchPage, StoreError> {
    let (total, unread, generation): (i64, i64, i64) =
        c.query_row("SELECT total, unread, generation FROM counts", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let key = plan.key();
    let (ids, unread_matching) = match cache.get(&key, generation) {
        Some(hit) => hit,
        None => {
            let (ids, unread_matching) = fts_matches(c, plan, total, unread)?;
            let ids = Arc::new(ids);
            cache.put(Cached {
                expression: key,
                generation,
                ids: ids.clone(),
                unread: unread_matching,
            });
            (ids, unread_matching)
        }
    };
    let matching = ids.len() as u64;
    let n = ids.len();
    let end = n.saturating_sub(usize::try_from(start).unwrap_or(usize::MAX));
    let begin = end.saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    let messages = if begin == end {
        Vec::new()
    } else {
        // Integers only: the list is SQL we write, not user text.
        let list = ids[begin..end]
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut st = c.prepare(&format!(
            "SELECT {SUMMARY} FROM messages WHERE id IN ({list}) ORDER BY id DESC"
        ))?;
        st.query_map([], summary_row)?
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(SearchPage {
        messages,
        matching,
        unread: unread_matching,
    })
}

/// The rowids matching one FTS5 expression over one table, in order.
fn fts_ids(c: &Connection, index: Index, expression: &str) -> Result<Vec<i64>, StoreError> {
    let table = index.table();
    let mut ids: Vec<i64> = c
        .prepare_cached(&format!("SELECT rowid FROM {table} WHERE {table} MATCH ?1"))?
        .query_map([expression], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// One pass over each index the plan names: the matching rowids in order,
/// and how many of them are unread.
fn fts_matches(
    c: &Connection,
    plan: &Plan,
    total: i64,
    unread: i64,
) -> Result<(Vec<i64>, u64), StoreError> {
    let mut ids: Option<Vec<i64>> = None;
    for (index, expression) in &plan.positive {
        let found = fts_ids(c, *index, expression)?;
        ids = Some(match ids {
            None => found,
            Some(mut ids) => {
                retain_sorted(&mut ids, &found, true);
                ids
            }
        });
    }
    let mut ids = ids.unwrap_or_default();
    for (index, expression) in &plan.negative {
        if ids.is_empty() {
            break;
        }
        retain_sorted(&mut ids, &fts_ids(c, *index, expression)?, false);
    }
    let matching = ids.len() as u64;
    // Unread among the matches: nothing to look up when all or none are
    // unread; otherwise intersect with the smaller of the read and unread
    // sets (each a partial index, so a compact scan of rowids).
    let unread_matching = if unread == 0 {
        0
    } else if unread == total {
        matching
    } else if total - unread <= unread {
        matching - intersect(&ids, &flag_ids(c, 1)?)
    } else {
        intersect(&ids, &flag_ids(c, 0)?)
    };
    Ok((ids, unread_matching))
}

/// Rowids of the messages whose read flag is `read`, in order.
fn flag_ids(c: &Connection, read: i64) -> Result<Vec<i64>, StoreError> {
    let sql = if read == 0 {
        "SELECT id FROM messages INDEXED BY messages_unread WHERE read = 0 ORDER BY id"
    } else {
        "SELECT id FROM messages INDEXED BY messages_read WHERE read = 1 ORDER BY id"
    };
    Ok(c.prepare_cached(sql)?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Keeps the values of sorted `ids` that are (`keep_common`) or are not
/// in sorted `other`.
fn retain_sorted(ids: &mut Vec<i64>, other: &[i64], keep_common: bool) {
    let mut j = 0;
    ids.retain(|x| {
        while j < other.len() && other[j] < *x {
            j += 1;
        }
        (j < other.len() && other[j] == *x) == keep_common
    });
}

/// How many values two sorted lists share.
fn intersect(a: &[i64], b: &[i64]) -> u64 {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .filter(|x| large.binary_search(x).is_ok())
        .count() as u64
}

/// Queries with flags (`is:read`, `has:attachment`) or only negated
/// words: filtered in SQL over `messages`.
fn search_sql(
    c: &Connection,
    query: &Query,
    start: u64,
    limit: u64,
) -> Result<SearchPage, StoreError> {
    let (filter, args) = query.to_sql();
    let mut st = c.prepare_cached(&format!(
        "SELECT {SUMMARY} FROM messages WHERE {filter} ORDER BY id DESC LIMIT ? OFFSET ?"
    ))?;
    let mut all: Vec<rusqlite::types::Value> = args.clone();
    all.push(clamp(limit).into());
    all.push(clamp(start).into());
    let messages = st
        .query_map(params_from_iter(all), summary_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let (matching, unread) = match query.read_flags_only() {
        // Read flags only (`is:unread`): the counts are the totals, kept
        // in this snapshot's `counts` row; no need to count 100,000 rows.
        Some((read, unread)) => {
            let (all, all_unread): (i64, i64) =
                c.query_row("SELECT total, unread FROM counts", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let unread = if unread { all_unread } else { 0 };
            let read = if read { all - all_unread } else { 0 };
            (read + unread, unread)
        }
        None => {
            let (matching, unread): (i64, f64) = c
                .prepare_cached(&format!(
                    "SELECT count(*), total(read = 0) FROM messages WHERE {filter}"
                ))?
                .query_row(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?;
            (matching, unread as i64)
        }
    };
    Ok(SearchPage {
        messages,
        matching: matching as u64,
        unread: unread as u64,
    })
}

const SUMMARY: &str = "uid, message_id, read, from_json, to_json, cc_json, bcc_json, reply_to_json, \
                       subject, created, size, attachments, snippet";

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Summary> {
    let json = |i: usize| -> rusqlite::Result<Vec<Address>> {
        let text: String = r.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    let from_text: String = r.get(3)?;
    Ok(Summary {
        id: r.get(0)?,
        message_id: r.get(1)?,
        read: r.get::<_, i64>(2)? != 0,
        from: serde_json::from_str(&from_text).unwrap_or(None),
        to: json(4)?,
        cc: json(5)?,
        bcc: json(6)?,
        reply_to: json(7)?,
        subject: r.get(8)?,
        created: crate::time::rfc3339_ms(r.get(9)?),
        tags: Vec::new(),
        size: r.get::<_, i64>(10)? as u64,
        attachments: r.get::<_, i64>(11)? as u32,
        snippet: r.get(12)?,
    })
}

fn init_schema(c: &Connection) -> Result<(), StoreError> {
    let had_messages = table_exists(c, "messages")?;
    let had_addr = table_exists(c, "addr")?;
    // 4 KiB pages (for a new database; an existing one keeps its own).
    // Raw sources are packed (see `packed`), so a 10 KiB message no longer
    // needs overflow pages, and a commit rewrites each page it dirties
    // whole: with 8 KiB pages the writer wrote 14.8 KB of WAL per W1
    // message, with 4 KiB 10.9 KB. (Before packing, 8 KiB pages had won:
    // one overflow page per message instead of three.)
    c.execute_batch(
        "PRAGMA page_size = 4096;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA journal_size_limit = 67108864;
         CREATE TABLE IF NOT EXISTS messages (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             uid TEXT NOT NULL UNIQUE,
             created INTEGER NOT NULL,
             message_id TEXT NOT NULL,
             subject TEXT NOT NULL,
             from_json TEXT NOT NULL,
             to_json TEXT NOT NULL,
             cc_json TEXT NOT NULL,
             bcc_json TEXT NOT NULL,
             reply_to_json TEXT NOT NULL,
             return_path TEXT NOT NULL,
             size INTEGER NOT NULL,
             attachments INTEGER NOT NULL,
             snippet TEXT NOT NULL,
             read INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS messages_unread ON messages(read) WHERE read = 0;
         CREATE INDEX IF NOT EXISTS messages_read ON messages(read) WHERE read = 1;
         -- `packed`: 1 when `data` is the message LZ4-compressed (see
         -- `packed`), 0 when it is the message as received.
         CREATE TABLE IF NOT EXISTS raw (
             id INTEGER PRIMARY KEY, data BLOB NOT NULL, packed INTEGER NOT NULL DEFAULT 0
         );
         CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
             subject, from_addr, to_addr, cc_addr, bcc_addr, message_id, body,
             content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2'
         );
         -- `from:`/`to:`/`cc:`/`bcc:` searches: each mailbox's word
         -- suffixes as whole tokens (`search::address_tokens`). No
         -- positions are needed (`detail = column`); `detail = none` would
         -- do too, but its prefix queries are twice as slow.
         CREATE VIRTUAL TABLE IF NOT EXISTS addr USING fts5(
             tokens, content = '', contentless_delete = 1, detail = column,
             tokenize = \"ascii tokenchars '_'\"
         );
         -- The totals, kept by the writer in the same transaction as the
         -- change, so that a reader sees them in its snapshot without
         -- counting 100,000 rows.
         CREATE TABLE IF NOT EXISTS counts (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             total INTEGER NOT NULL,
             unread INTEGER NOT NULL,
             -- One more at every commit: what a cached search result was
             -- computed from (see `SearchCache`).
             generation INTEGER NOT NULL
         );
         INSERT OR REPLACE INTO counts (one, total, unread, generation)
             SELECT 1, count(*), count(*) FILTER (WHERE read = 0), 0 FROM messages;",
    )?;
    if had_messages && !had_addr {
        index_addresses(c)?;
    }
    // A database made before messages were packed: its rows stay as they
    // are (`packed = 0`), new ones may be packed.
    let has_packed: bool = c.query_row(
        "SELECT count(*) FROM pragma_table_info('raw') WHERE name = 'packed'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_packed {
        c.execute_batch("ALTER TABLE raw ADD COLUMN packed INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

fn table_exists(c: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?)
}

/// Fills the `addr` index of a database made before it existed, from the
/// addresses kept in `messages`.
fn index_addresses(c: &Connection) -> Result<(), StoreError> {
    let tx = c.unchecked_transaction()?;
    {
        let mut read =
            tx.prepare("SELECT id, from_json, to_json, cc_json, bcc_json FROM messages")?;
        let mut write = tx.prepare("INSERT INTO addr (rowid, tokens) VALUES (?1, ?2)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let list = |i: usize| -> rusqlite::Result<Vec<Address>> {
                Ok(serde_json::from_str(&r.get::<_, String>(i)?).unwrap_or_default())
            };
            let from: Option<Address> =
                serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or(None);
            let tokens = addr_index_text(from.as_slice(), &list(2)?, &list(3)?, &list(4)?);
            write.execute(params![r.get::<_, i64>(0)?, tokens])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// What the `addr` index holds for one message.
fn addr_index_text(from: &[Address], to: &[Address], cc: &[Address], bcc: &[Address]) -> String {
    let mut text = String::new();
    for (field, list) in [
        (AddressField::From, from),
        (AddressField::To, to),
        (AddressField::Cc, cc),
        (AddressField::Bcc, bcc),
    ] {
        let tokens = address_tokens(field, list);
        if !tokens.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&tokens);
        }
    }
    text
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// Reads the totals from the `counts` table into `stats`; returns them.
fn load_counts(c: &Connection, stats: &Stats) -> Result<(i64, i64), StoreError> {
    let (total, unread): (i64, i64) = c.query_row("SELECT total, unread FROM counts", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    stats.total.store(total as u64, Ordering::Relaxed);
    stats.unread.store(unread as u64, Ordering::Relaxed);
    Ok((total, unread))
}

/// A message as the writer inserts it: every column computed beforehand.
struct Row {
    uid: String,
    message: NewMessage,
    from_json: String,
    to_json: String,
    cc_json: String,
    bcc_json: String,
    reply_to_json: String,
    from_words: String,
    to_words: String,
    cc_words: String,
    bcc_words: String,
    addr_tokens: String,
    /// What the `raw` table gets: the message packed when that pays (see
    /// `packed`), else as received. `message.raw` is left empty, so that a
    /// queued message is held once, not twice.
    raw: Bytes,
    packed: bool,
    /// The message's size as received.
    size: usize,
}

impl Row {
    fn new(mut message: NewMessage) -> Row {
        let size = message.raw.len();
        let (raw, packed) = match crate::packed::pack(&message.raw) {
            Some(small) => (Bytes::from(small), true),
            None => (std::mem::take(&mut message.raw), false),
        };
        message.raw = Bytes::new();
        let json = |a: &Vec<Address>| serde_json::to_string(a).unwrap_or_else(|_| "[]".into());
        let words = |a: &[Address]| {
            a.iter()
                .map(|a| format!("{} {}", a.name, a.address))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Row {
            uid: crate::id::new_id(),
            from_json: serde_json::to_string(&message.from).unwrap_or_else(|_| "null".into()),
            to_json: json(&message.to),
            cc_json: json(&message.cc),
            bcc_json: json(&message.bcc),
            reply_to_json: json(&message.reply_to),
            from_words: words(message.from.as_slice()),
            to_words: words(&message.to),
            cc_words: words(&message.cc),
            bcc_words: words(&message.bcc),
            addr_tokens: addr_index_text(
                message.from.as_slice(),
                &message.to,
                &message.cc,
                &message.bcc,
            ),
            raw,
            packed,
            size,
            message,
        }
    }

    fn summary(&self) -> Summary {
        let m = &self.message;
        Summary {
            id: self.uid.clone(),
            message_id: m.message_id.clone(),
            read: false,
            from: m.from.clone(),
            to: m.to.clone(),
            cc: m.cc.clone(),
            bcc: m.bcc.clone(),
            reply_to: m.reply_to.clone(),
            subject: m.subject.clone(),
            created: crate::time::rfc3339_ms(m.created_ms),
            tags: Vec::new(),
            size: self.size as u64,
            attachments: m.attachments,
            snippet: m.snippet.clone(),
        }
    }
}

struct Writer {
    conn: Connection,
    max: usize,
    stats: Arc<Stats>,
    events: broadcast::Sender<Event>,
    /// Wakes the checkpointer after a commit.
    checkpoint: std::sync::mpsc::SyncSender<()>,
    /// Set by the checkpointer when the WAL has grown long.
    wal_long: Arc<AtomicBool>,
    /// Totals as of the last commit (mirrored in `counts` and `stats`).
    total: i64,
    unread: i64,
}

/// A write's outcome, waiting for the commit before it is answered.
enum Done {
    Insert(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
}

/// Changes to the totals made by one write.
#[derive(Default, Clone, Copy)]
struct Delta {
    total: i64,
    unread: i64,
}

impl Delta {
    fn add(&mut self, other: Delta) {
        self.total += other.total;
        self.unread += other.unread;
    }
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Write>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut stop = false;
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            if let Some(at) = batch.iter().position(|w| matches!(w, Write::Stop)) {
                // Writes queued after the stop are dropped: their senders
                // see "shut down" (a 451 for SMTP, so nothing is lost).
                batch.truncate(at);
                stop = true;
            }
            self.commit_batch(&mut batch);
            if stop {
                break;
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Write>) {
        let mut done = Vec::with_capacity(batch.len());
        let mut changed = false;
        let mut delta = Delta::default();
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            for w in batch.drain(..) {
                match w {
                    Write::Insert(row, reply) => {
                        let r = insert(&tx, &row);
                        if r.is_ok() {
                            delta.add(Delta {
                                total: 1,
                                unread: 1,
                            });
                        }
                        done.push(Done::Insert(reply, r));
                    }
                    Write::SetRead(which, read, reply) => {
                        let r = set_read(&tx, &which, read);
                        if let Ok(n) = r {
                            changed |= n > 0;
                            let n = n as i64;
                            delta.unread += if read { -n } else { n };
                        }
                        done.push(Done::Count(reply, r));
                    }
                    Write::Delete(which, reply) => {
                        let r = delete(&tx, &which);
                        let r = r.map(|d| {
                            changed |= d.total != 0;
                            delta.add(d);
                            (-d.total) as usize
                        });
                        done.push(Done::Count(reply, r));
                    }
                    Write::Stop => {}
                }
            }
            if self.max > 0 {
                let pruned = prune(&tx, self.max)?;
                changed |= pruned.total != 0;
                delta.add(pruned);
            }
            tx.prepare_cached(
                "UPDATE counts SET total = ?1, unread = ?2, generation = generation + 1",
            )?
            .execute(params![
                self.total + delta.total,
                self.unread + delta.unread
            ])?;
            tx.commit()?;
            Ok(())
        })();
        match &outcome {
            Ok(()) => {
                self.total += delta.total;
                self.unread += delta.unread;
                self.stats.total.store(self.total as u64, Ordering::Relaxed);
                self.stats
                    .unread
                    .store(self.unread as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch is answered with errors");
                match load_counts(&self.conn, &self.stats) {
                    Ok((total, unread)) => (self.total, self.unread) = (total, unread),
                    Err(e) => tracing::warn!(error = %e, "reading the totals"),
                }
            }
        }
        // Answered before any checkpoint below: that one may take tens of
        // milliseconds and the batch is committed already.
        for d in done {
            match d {
                Done::Insert(reply, r) => {
                    let _ = reply.send(outcome.clone().and(r));
                }
                Done::Count(reply, r) => {
                    let _ = reply.send(outcome.clone().and(r));
                }
            }
        }
        if outcome.is_err() {
            return;
        }
        if changed {
            let _ = self.events.send(Event::Changed);
        }
        // Wake the checkpointer (a full channel: it is awake already).
        let _ = self.checkpoint.try_send(());
        if self.wal_long.swap(false, Ordering::Relaxed) {
            // Under sustained writes the background checkpoint never
            // catches up with the last commit, and a WAL that is never
            // fully copied is never restarted. Copying the frames it has
            // not reached yet, here between two transactions, lets the
            // next transaction start the WAL from the beginning.
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "WAL checkpoint");
            }
        }
    }
}

/// Copies committed pages from the WAL into the database on its own
/// thread, so the writer never waits for a checkpoint (nor its `fsync`).
/// The writer's automatic checkpoints are off; this one runs after commits,
/// at most every `CHECKPOINT_PAUSE`, in PASSIVE mode (it never blocks the writer or the
/// readers), and stops when the writer hangs up.
///
/// A WAL restarts from its beginning only when a checkpoint has copied all
/// of it. After a burst this one catches up by itself and the next write
/// restarts the WAL (and trims it to `journal_size_limit`). Under writes
/// that never pause it never quite catches up, so past `WAL_LONG_BYTES`
/// the writer is asked to copy the rest between two transactions.
fn checkpointer(conn: Connection, wake: std::sync::mpsc::Receiver<()>, wal_long: Arc<AtomicBool>) {
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .unwrap_or(4096)
        .max(512);
    let long_frames = WAL_LONG_BYTES / page_size;
    while wake.recv().is_ok() {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(frames) => {
                if frames >= long_frames {
                    wal_long.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint"),
        }
        thread::sleep(CHECKPOINT_PAUSE);
    }
}

/// The checkpointer's rest between two checkpoints. Each copies the pages
/// committed since the last one and `fsync`s twice (the WAL, then the
/// database), and its copying and syncing slow the writer's WAL appends
/// down. Fewer passes also copy a page rewritten by many commits (B-tree
/// right edges, index segments, the first page) fewer times. Measured
/// (20,000 x 10 KiB, 50 sessions, A/B interleaved at load 2.3-2.5):
/// 7,696 / 8,410 msgs/s with 200 ms, 10,934 / 10,142 with 1 s, 11,061 /
/// 10,710 with no checkpoint during the run.
const CHECKPOINT_PAUSE: Duration = Duration::from_secs(1);

/// WAL length past which the writer finishes a checkpoint itself so that
/// the WAL restarts. That checkpoint stops ingest while it copies what the
/// checkpointer has not reached and `fsync`s the database: at 16 MiB (the
/// earlier limit) it ran after every checkpointer pass under load (the WAL
/// grew by ~18 KiB per 10 KiB message before packing) and took 35-45 ms each time on a
/// quiet machine, 100-200 ms under load, about an eighth of the ingest
/// time. At 256 MiB a burst of ~14,000 such messages passes without it;
/// an unbroken stream of 60,000 ran at 13,300-15,000 msgs/s with it (64
/// MiB: 13,300; checkpointing without rest once past the limit instead of
/// asking the writer: 10,800-13,200).
const WAL_LONG_BYTES: i64 = 256 << 20;

fn insert(c: &Connection, row: &Row) -> Result<(), StoreError> {
    let m = &row.message;
    c.prepare_cached(
        "INSERT INTO messages (uid, created, message_id, subject, from_json, to_json, cc_json, \
         bcc_json, reply_to_json, return_path, size, attachments, snippet) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        row.uid,
        m.created_ms,
        m.message_id,
        m.subject,
        row.from_json,
        row.to_json,
        row.cc_json,
        row.bcc_json,
        row.reply_to_json,
        m.return_path,
        row.size as i64,
        m.attachments,
        m.snippet,
    ])?;
    let rowid = c.last_insert_rowid();
    c.prepare_cached("INSERT INTO raw (id, data, packed) VALUES (?1, ?2, ?3)")?
        .execute(params![rowid, row.raw.as_ref(), row.packed])?;
    c.prepare_cached(
        "INSERT INTO fts (rowid, subject, from_addr, to_addr, cc_addr, bcc_addr, message_id, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        rowid,
        m.subject,
        row.from_words,
        row.to_words,
        row.cc_words,
        row.bcc_words,
        m.message_id,
        m.body,
    ])?;
    c.prepare_cached("INSERT INTO addr (rowid, tokens) VALUES (?1, ?2)")?
        .execute(params![rowid, row.addr_tokens])?;
    Ok(())
}

/// The rowids a selection names, as a SQL condition on `messages` and its
/// arguments.
fn selection_sql(which: &Selection) -> (String, Vec<rusqlite::types::Value>) {
    match which {
        Selection::All => ("1".into(), Vec::new()),
        Selection::Ids(ids) => {
            let marks = vec!["?"; ids.len()].join(",");
            (
                format!("uid IN ({marks})"),
                ids.iter().map(|s| s.clone().into()).collect(),
            )
        }
        Selection::Search(q) => q.to_sql(),
    }
}

fn set_read(c: &Connection, which: &Selection, read: bool) -> Result<usize, StoreError> {
    if matches!(which, Selection::Ids(ids) if ids.is_empty()) {
        return Ok(0);
    }
    let (filter, mut args) = selection_sql(which);
    args.insert(0, i64::from(read).into());
    let sql = format!("UPDATE messages SET read = ? WHERE read != ?1 AND ({filter})");
    Ok(c.execute(&sql, params_from_iter(args))?)
}

/// Deletes the selected messages; the delta is negative.
fn delete(c: &Connection, which: &Selection) -> Result<Delta, StoreError> {
    if matches!(which, Selection::Ids(ids) if ids.is_empty()) {
        return Ok(Delta::default());
    }
    if matches!(which, Selection::All) {
        // Counted, not read from `counts`: this batch may have changed them.
        let (total, unread): (i64, i64) = c.query_row(
            "SELECT count(*), count(*) FILTER (WHERE read = 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        c.execute_batch(
            "DELETE FROM raw; DELETE FROM fts; DELETE FROM addr; DELETE FROM messages;",
        )?;
        return Ok(Delta {
            total: -total,
            unread: -unread,
        });
    }
    let (filter, args) = selection_sql(which);
    c.execute(
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)",
        [],
    )?;
    c.execute("DELETE FROM doomed", [])?;
    c.execute(
        &format!("INSERT INTO doomed SELECT id FROM messages WHERE {filter}"),
        params_from_iter(args),
    )?;
    delete_doomed(c)
}

/// Deletes the rows listed in the temporary table `doomed`.
fn delete_doomed(c: &Connection) -> Result<Delta, StoreError> {
    let unread: i64 = c.query_row(
        "SELECT count(*) FROM messages WHERE read = 0 AND id IN (SELECT id FROM doomed)",
        [],
        |r| r.get(0),
    )?;
    c.execute("DELETE FROM raw WHERE id IN (SELECT id FROM doomed)", [])?;
    c.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM doomed)", [])?;
    c.execute(
        "DELETE FROM addr WHERE rowid IN (SELECT id FROM doomed)",
        [],
    )?;
    let n = c.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM doomed)",
        [],
    )?;
    c.execute("DELETE FROM doomed", [])?;
    Ok(Delta {
        total: -(n as i64),
        unread: -unread,
    })
}

/// Keeps the newest `max` messages.
fn prune(c: &Connection, max: usize) -> Result<Delta, StoreError> {
    let cutoff: Option<i64> = c
        .prepare_cached("SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?1")?
        .query_row([max as i64 - 1], |r| r.get(0))
        .optional()?;
    let Some(cutoff) = cutoff else {
        return Ok(Delta::default());
    };
    c.execute(
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)",
        [],
    )?;
    c.execute("DELETE FROM doomed", [])?;
    let n = c.execute(
        "INSERT INTO doomed SELECT id FROM messages WHERE id < ?1",
        [cutoff],
    )?;
    if n == 0 {
        return Ok(Delta::default());
    }
    delete_doomed(c)
}
