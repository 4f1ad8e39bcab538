//! SQLite storage: one writer thread that commits in batches, a pool of
//! read connections, an FTS5 index, pruning to the newest N messages.
//!
//! Why one writer thread: SQLite allows one writer at a time. Funnelling
//! every write (new messages, read marks, deletes) through one thread that
//! drains its queue into one transaction gives group commit for free — under
//! load one `COMMIT` covers hundreds of messages — and no `SQLITE_BUSY`.
//! A message's sender is answered only after the commit that holds it, so
//! `250` is never sent for a message that is not stored and searchable.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::search::Query;

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
    Insert(
        Box<NewMessage>,
        oneshot::Sender<Result<Summary, StoreError>>,
    ),
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
        let stats = Arc::new(Stats::default());
        refresh_stats(&conn, &stats)?;
        let (events, _) = broadcast::channel(1024);
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        let writer = Writer {
            conn,
            max,
            stats: stats.clone(),
            events: events.clone(),
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
    pub async fn insert(&self, message: NewMessage) -> Result<Summary, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.write(Write::Insert(Box::new(message), tx)).await?;
        rx.await.map_err(|_| stopped())?
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

    /// Messages matching `query`, newest first, and how many match in all.
    pub async fn search(
        &self,
        query: Query,
        start: u64,
        limit: u64,
    ) -> Result<(Vec<Summary>, u64), StoreError> {
        self.read(move |c| {
            let (filter, args) = query.to_sql();
            let mut st = c.prepare_cached(&format!(
                "SELECT {SUMMARY} FROM messages WHERE {filter} ORDER BY id DESC LIMIT ? OFFSET ?"
            ))?;
            let mut all: Vec<rusqlite::types::Value> = args.clone();
            all.push(clamp(limit).into());
            all.push(clamp(start).into());
            let rows = st.query_map(params_from_iter(all), summary_row)?;
            let messages = rows.collect::<Result<Vec<_>, _>>()?;
            let count: i64 = c
                .prepare_cached(&format!("SELECT count(*) FROM messages WHERE {filter}"))?
                .query_row(params_from_iter(args), |r| r.get(0))?;
            Ok((messages, count as u64))
        })
        .await
    }

    /// One message by ID, or the newest for `latest`.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = if id == "latest" {
                "SELECT m.uid, m.created, m.return_path, r.data FROM messages m JOIN raw r ON r.id = m.id \
                 ORDER BY m.id DESC LIMIT 1"
            } else {
                "SELECT m.uid, m.created, m.return_path, r.data FROM messages m JOIN raw r ON r.id = m.id \
                 WHERE m.uid = ?1"
            };
            let mut st = c.prepare_cached(sql)?;
            let row = st
                .query_row(
                    rusqlite::params_from_iter((id != "latest").then_some(&id)),
                    |r| {
                        Ok(Stored {
                            id: r.get(0)?,
                            created_ms: r.get(1)?,
                            return_path: r.get(2)?,
                            raw: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                        })
                    },
                )
                .optional()?;
            Ok(row)
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
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
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
         CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
         CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
             subject, from_addr, to_addr, cc_addr, bcc_addr, message_id, body,
             content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2'
         );",
    )?;
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

fn refresh_stats(c: &Connection, stats: &Stats) -> Result<(), StoreError> {
    let total: i64 = c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
    let unread: i64 = c.query_row("SELECT count(*) FROM messages WHERE read = 0", [], |r| {
        r.get(0)
    })?;
    stats.total.store(total as u64, Ordering::Relaxed);
    stats.unread.store(unread as u64, Ordering::Relaxed);
    Ok(())
}

struct Writer {
    conn: Connection,
    max: usize,
    stats: Arc<Stats>,
    events: broadcast::Sender<Event>,
}

/// A write's outcome, waiting for the commit before it is answered.
enum Done {
    Insert(
        oneshot::Sender<Result<Summary, StoreError>>,
        Box<Result<Summary, StoreError>>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
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
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            for w in batch.drain(..) {
                match w {
                    Write::Insert(m, reply) => {
                        let r = insert(&tx, &m);
                        done.push(Done::Insert(reply, Box::new(r)));
                    }
                    Write::SetRead(which, read, reply) => {
                        let r = set_read(&tx, &which, read);
                        changed |= matches!(r, Ok(n) if n > 0);
                        done.push(Done::Count(reply, r));
                    }
                    Write::Delete(which, reply) => {
                        let r = delete(&tx, &which);
                        changed |= matches!(r, Ok(n) if n > 0);
                        done.push(Done::Count(reply, r));
                    }
                    Write::Stop => {}
                }
            }
            if self.max > 0 {
                changed |= prune(&tx, self.max)? > 0;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "commit failed; the batch is answered with errors");
        }
        if let Err(e) = refresh_stats(&self.conn, &self.stats) {
            tracing::warn!(error = %e, "counting messages");
        }
        for d in done {
            match d {
                Done::Insert(reply, r) => {
                    let r = match &outcome {
                        Ok(()) => *r,
                        Err(e) => Err(e.clone()),
                    };
                    if let Ok(s) = &r {
                        let _ = self.events.send(Event::New(Box::new(s.clone())));
                    }
                    let _ = reply.send(r);
                }
                Done::Count(reply, r) => {
                    let r = match &outcome {
                        Ok(()) => r,
                        Err(e) => Err(e.clone()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
        if changed && outcome.is_ok() {
            let _ = self.events.send(Event::Changed);
        }
    }
}

fn insert(c: &Connection, m: &NewMessage) -> Result<Summary, StoreError> {
    let uid = crate::id::new_id();
    let json = |a: &Vec<Address>| serde_json::to_string(a).unwrap_or_else(|_| "[]".into());
    let from_json = serde_json::to_string(&m.from).unwrap_or_else(|_| "null".into());
    c.prepare_cached(
        "INSERT INTO messages (uid, created, message_id, subject, from_json, to_json, cc_json, \
         bcc_json, reply_to_json, return_path, size, attachments, snippet) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        uid,
        m.created_ms,
        m.message_id,
        m.subject,
        from_json,
        json(&m.to),
        json(&m.cc),
        json(&m.bcc),
        json(&m.reply_to),
        m.return_path,
        m.raw.len() as i64,
        m.attachments,
        m.snippet,
    ])?;
    let rowid = c.last_insert_rowid();
    c.prepare_cached("INSERT INTO raw (id, data) VALUES (?1, ?2)")?
        .execute(params![rowid, m.raw.as_ref()])?;
    let words = |a: &[Address]| {
        a.iter()
            .map(|a| format!("{} {}", a.name, a.address))
            .collect::<Vec<_>>()
            .join(" ")
    };
    c.prepare_cached(
        "INSERT INTO fts (rowid, subject, from_addr, to_addr, cc_addr, bcc_addr, message_id, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        rowid,
        m.subject,
        words(m.from.as_slice()),
        words(&m.to),
        words(&m.cc),
        words(&m.bcc),
        m.message_id,
        m.body,
    ])?;
    Ok(Summary {
        id: uid,
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
        size: m.raw.len() as u64,
        attachments: m.attachments,
        snippet: m.snippet.clone(),
    })
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

fn delete(c: &Connection, which: &Selection) -> Result<usize, StoreError> {
    if matches!(which, Selection::Ids(ids) if ids.is_empty()) {
        return Ok(0);
    }
    if matches!(which, Selection::All) {
        c.execute_batch("DELETE FROM raw; DELETE FROM fts; ")?;
        return Ok(c.execute("DELETE FROM messages", [])?);
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
fn delete_doomed(c: &Connection) -> Result<usize, StoreError> {
    c.execute("DELETE FROM raw WHERE id IN (SELECT id FROM doomed)", [])?;
    c.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM doomed)", [])?;
    let n = c.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM doomed)",
        [],
    )?;
    c.execute("DELETE FROM doomed", [])?;
    Ok(n)
}

/// Keeps the newest `max` messages.
fn prune(c: &Connection, max: usize) -> Result<usize, StoreError> {
    let cutoff: Option<i64> = c
        .query_row(
            "SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET ?1",
            [max as i64 - 1],
            |r| r.get(0),
        )
        .optional()?;
    let Some(cutoff) = cutoff else { return Ok(0) };
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
        return Ok(0);
    }
    delete_doomed(c)
}
