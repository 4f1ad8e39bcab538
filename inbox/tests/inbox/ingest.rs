//! Group commit under concurrent senders: a `250` means stored, indexed
//! and on disk (in the WAL), whatever the checkpoints are doing.

use std::time::Duration;

use crate::support::{Inbox, simple, smtp_send};

/// Senders at once, and messages each (one connection per message).
const SENDERS: usize = 24;
const EACH: usize = 8;

/// A message whose subject and body hold words no other message has.
fn tagged(sender: usize, n: usize) -> (String, Vec<u8>) {
    let tag = format!("tag{sender}x{n}");
    let body = format!("body{tag} {}", "filler words ".repeat(400));
    let raw = simple("a@example.com", "b@example.com", &tag, &body);
    (tag, raw)
}

/// Runs `send(sender, n)` for each message of each sender, the senders at
/// once, each on its own task.
async fn from_every_sender<F, Fut>(inbox: &std::sync::Arc<Inbox>, send: F)
where
    F: Fn(std::sync::Arc<Inbox>, usize, usize) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let inbox = inbox.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                send(inbox.clone(), sender, n).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// One search's `messages_count` and the IDs on its first page.
async fn matches(inbox: &Inbox, query: &str) -> (u64, Vec<String>) {
    let v = inbox
        .get_json(&format!("/api/v1/search?query={query}"), 200)
        .await;
    let ids = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_str().unwrap().to_owned())
        .collect();
    (v["messages_count"].as_u64().unwrap(), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_is_searchable_at_once_under_concurrent_senders() {
    let inbox = std::sync::Arc::new(Inbox::start(&["--max", "0"]));
    from_every_sender(&inbox, |inbox, sender, n| async move {
        let (tag, raw) = tagged(sender, n);
        let reply = smtp_send(inbox.smtp, "a@example.com", &["b@example.com"], &raw).await;
        assert!(reply.starts_with("250"), "{reply}");
        // No waiting: the commit holding it came before the 250.
        let (count, ids) = matches(&inbox, &format!("subject:{tag}")).await;
        assert_eq!(count, 1, "{tag} found by subject right after its 250");
        assert_eq!(matches(&inbox, &format!("body{tag}")).await.0, 1);
        let (status, stored, _) = inbox
            .get_bytes(&format!("/api/v1/message/{}/raw", ids[0]))
            .await;
        assert_eq!((status, stored), (200, raw), "{tag} byte-exact");
    })
    .await;
    let list = inbox.get_json("/api/v1/messages?limit=1", 200).await;
    assert_eq!(list["total"], (SENDERS * EACH) as u64);
    assert_eq!(matches(&inbox, "filler").await.0, (SENDERS * EACH) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_sigkill_before_any_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let db = db.to_str().unwrap();
    let first = std::sync::Arc::new(Inbox::start(&["--database", db, "--max", "0"]));
    from_every_sender(&first, |inbox, sender, n| async move {
        let (_, raw) = tagged(sender, n);
        let reply = smtp_send(inbox.smtp, "a@example.com", &["b@example.com"], &raw).await;
        assert!(reply.starts_with("250"), "{reply}");
    })
    .await;
    // Killed at once (SIGKILL on drop), within the checkpointer's pause:
    // all but the first commits are only in the WAL.
    drop(std::sync::Arc::into_inner(first).expect("no other owner"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = Inbox::start(&["--database", db, "--max", "0"]);
    let list = second.get_json("/api/v1/messages?limit=1", 200).await;
    assert_eq!(list["total"], (SENDERS * EACH) as u64);
    assert_eq!(matches(&second, "filler").await.0, (SENDERS * EACH) as u64);
    let (count, ids) = matches(&second, "subject:tag3x5").await;
    assert_eq!(count, 1);
    let (_, stored, _) = second
        .get_bytes(&format!("/api/v1/message/{}/raw", ids[0]))
        .await;
    assert_eq!(stored, tagged(3, 5).1);
}
