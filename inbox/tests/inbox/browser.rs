//! The web UI in headless Chromium (chromedriver): live updates, the
//! message view, the sandbox around hostile HTML, downloads and search.
//! Screenshots go to `target/tmp/inbox-screenshots/`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    api::{BUDGET, MULTIPART},
    support::{Inbox, smtp_send},
    webdriver::Browser,
};

/// A loopback HTTP listener that records the path of every request it
/// gets: the side effect a script or a remote load in message HTML would
/// leave.
struct Canary {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    async fn start() -> Canary {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                    seen.lock().unwrap().push(path);
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Canary { port, hits, task }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hostile_html(port: u16) -> String {
    format!(
        "<html><head><script>document.title='pwned';fetch('http://127.0.0.1:{port}/script')</script>\
         <link rel=\"stylesheet\" href=\"http://127.0.0.1:{port}/style.css\"></head>\
         <body><p id=\"hostile\">Hostile body</p>\
         <img src=\"x-missing\" onerror=\"fetch('http://127.0.0.1:{port}/onerror');try{{parent.document.title='pwned'}}catch(e){{}}\">\
         <img src=\"http://127.0.0.1:{port}/remote.png\"></body></html>"
    )
}

fn hostile_message(port: u16) -> Vec<u8> {
    format!(
        "From: mallory@evil.example\r\nTo: bob@example.org\r\nSubject: Hostile HTML\r\n\
         Message-ID: <hostile@evil.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n{}\r\n",
        hostile_html(port)
    )
    .into_bytes()
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("inbox-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_in_headless_chromium() {
    let inbox = Inbox::start(&[]);
    let canary = Canary::start().await;
    let browser = Browser::start().await;
    browser.goto(&inbox.url("/")).await;
    browser
        .wait_for("#list li.empty", 20, "the empty list renders")
        .await;
    // Let the list reload that follows the event stream's `ready` settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A marker that a reload would wipe out.
    browser
        .exec("window.__noReload = 42; return true;", json!([]))
        .await;

    // 1. A message sent over SMTP appears without reloading.
    let reply = smtp_send(
        inbox.smtp,
        "ann@example.com",
        &["bob@example.org"],
        MULTIPART,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    browser
        .wait_until(
            "const r = document.querySelectorAll('#list li[data-id]'); \
             return r.length === 1 && r[0].textContent.includes('Quarterly report');",
            15,
            "the new message appears live",
        )
        .await;
    let row = browser.wait_for("#list li[data-id]", 1, "the row").await;
    assert_eq!(
        browser.exec("return window.__noReload;", json!([])).await,
        json!(42),
        "the page was not reloaded"
    );
    assert_eq!(
        browser.find_all("#list li.unread").await.len(),
        1,
        "marked unread"
    );

    // 2. Clicking shows subject, text and HTML; the message becomes read.
    browser.click(&row).await;
    browser
        .wait_until(
            "return document.getElementById('subject').textContent === 'Quarterly report';",
            10,
            "the subject is shown",
        )
        .await;
    let text = browser
        .exec(
            "return document.getElementById('tab-text').textContent;",
            json!([]),
        )
        .await;
    assert!(
        text.as_str().unwrap().contains("Café budget attached."),
        "{text}"
    );
    assert!(
        browser.find_all("#list li.unread").await.is_empty(),
        "read after opening"
    );
    let frame = browser.wait_for("#html-frame", 5, "the HTML frame").await;
    browser.frame(Some(&frame)).await;
    let bold = browser
        .wait_for("b", 10, "the HTML body renders in the frame")
        .await;
    assert_eq!(browser.text(&bold).await, "up");
    browser.frame(None).await;
    browser.screenshot(&screenshots().join("message.png")).await;

    // 3. The attachment downloads byte-exact.
    let link = browser
        .wait_for("#attachments a", 5, "the attachment link")
        .await;
    browser.click(&link).await;
    let file = browser.downloads.join("budget.bin");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "budget.bin was not downloaded within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bytes = std::fs::read(&file).unwrap();
    for _ in 0..50 {
        if bytes == BUDGET {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        bytes = std::fs::read(&file).unwrap();
    }
    assert_eq!(bytes, BUDGET, "downloaded attachment is byte-exact");

    // 4. Hostile HTML: neither <script> nor onerror runs, nothing remote loads.
    smtp_send(
        inbox.smtp,
        "mallory@evil.example",
        &["bob@example.org"],
        &hostile_message(canary.port),
    )
    .await;
    browser
        .wait_until(
            "return document.querySelectorAll('#list li[data-id]').length === 2;",
            15,
            "the hostile message appears live",
        )
        .await;
    let rows = browser.find_all("#list li[data-id]").await;
    browser.screenshot(&screenshots().join("list.png")).await;
    browser.click(&rows[0]).await;
    browser
        .wait_until(
            "return document.getElementById('subject').textContent === 'Hostile HTML';",
            10,
            "the hostile message opens",
        )
        .await;
    let frame = browser.wait_for("#html-frame", 5, "the HTML frame").await;
    browser.frame(Some(&frame)).await;
    browser
        .wait_for("#hostile", 10, "the hostile body renders")
        .await;
    browser.frame(None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        canary.hits(),
        Vec::<String>::new(),
        "no script, handler or remote load reached loopback"
    );
    assert!(
        !browser.title().await.contains("pwned"),
        "the parent title is untouched"
    );

    // 5. Search narrows the list.
    let search = browser.wait_for("#search", 5, "the search box").await;
    browser
        .type_text(&search, "subject:quarterly\u{E007}")
        .await;
    browser
        .wait_until(
            "const r = document.querySelectorAll('#list li[data-id]'); \
             return r.length === 1 && r[0].textContent.includes('Quarterly report');",
            10,
            "search narrows the list to one message",
        )
        .await;

    // Control: the same HTML outside the sandbox does reach the canary, so
    // the silence above is the sandbox's doing, not a broken canary.
    let control = format!(
        "data:text/html;charset=utf-8,{}",
        percent(&hostile_html(canary.port))
    );
    browser.goto(&control).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = canary.hits();
        // Chromium may refuse the loopback request from a data: page after
        // connecting (private network access), so count connections.
        if hits.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "control page did not reach the canary: {hits:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
