//! The REST API over HTTP against the running binary.

use reqwest::Method;
use serde_json::Value;

use crate::support::{Inbox, simple, smtp_send};

/// A multipart message: text + HTML, a binary attachment, an inline image,
/// a line starting with a dot and 8-bit bytes (kept byte-exact).
pub const MULTIPART: &[u8] = b"From: Ann Example <ann@example.com>\r\n\
To: Bob <bob@example.org>, carol@example.net\r\n\
Cc: dave@example.com\r\n\
Reply-To: replies@example.com\r\n\
Subject: Quarterly report\r\n\
Message-ID: <report-1@example.com>\r\n\
Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/related; boundary=\"rel\"\r\n\
\r\n\
--rel\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Numbers are up. Caf\xc3\xa9 budget attached.\r\n\
.leading dot line\r\n\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Numbers are <b>up</b>.</p><img src=\"cid:logo@x\">\r\n\
--alt--\r\n\
--rel\r\n\
Content-Type: image/png\r\n\
Content-ID: <logo@x>\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
iVBORw0KGgo=\r\n\
--rel--\r\n\
--outer\r\n\
Content-Type: application/octet-stream; name=\"budget.bin\"\r\n\
Content-Disposition: attachment; filename=\"budget.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAECA/7/gIE=\r\n\
--outer--\r\n";

/// The attachment's decoded bytes.
pub const BUDGET: &[u8] = &[0, 1, 2, 3, 0xfe, 0xff, 0x80, 0x81];

fn subjects(list: &Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Subject"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn message_endpoints_follow_mailpit() {
    let inbox = Inbox::start(&[]);
    let reply = smtp_send(
        inbox.smtp,
        "bounce@example.com",
        &["bob@example.org", "carol@example.net", "hidden@example.org"],
        MULTIPART,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");

    let list = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["unread"], 1);
    assert_eq!(list["messages_count"], 1);
    assert_eq!(list["count"], 1);
    assert_eq!(list["start"], 0);
    assert_eq!(list["tags"], serde_json::json!([]));
    let s = &list["messages"][0];
    let id = s["ID"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22);
    assert_eq!(s["MessageID"], "report-1@example.com");
    assert_eq!(s["Read"], false);
    assert_eq!(s["From"]["Name"], "Ann Example");
    assert_eq!(s["From"]["Address"], "ann@example.com");
    assert_eq!(s["To"][1]["Address"], "carol@example.net");
    assert_eq!(s["Cc"][0]["Address"], "dave@example.com");
    assert_eq!(
        s["Bcc"][0]["Address"], "hidden@example.org",
        "envelope-only recipient"
    );
    assert_eq!(s["ReplyTo"][0]["Address"], "replies@example.com");
    assert_eq!(s["Subject"], "Quarterly report");
    assert_eq!(s["Size"], MULTIPART.len());
    assert_eq!(s["Attachments"], 1);
    assert!(
        s["Snippet"]
            .as_str()
            .unwrap()
            .starts_with("Numbers are up. Café budget")
    );
    assert!(s["Created"].as_str().unwrap().ends_with('Z'));

    let m = inbox.get_json(&format!("/api/v1/message/{id}"), 200).await;
    assert_eq!(m["ID"], id.as_str());
    assert_eq!(m["Subject"], "Quarterly report");
    assert_eq!(m["ReturnPath"], "bounce@example.com");
    assert_eq!(m["Date"], "2026-12-01T10:00:00Z");
    assert!(m["Text"].as_str().unwrap().contains("Café budget"));
    assert!(m["HTML"].as_str().unwrap().contains("<b>up</b>"));
    assert_eq!(m["Attachments"].as_array().unwrap().len(), 1);
    let att = &m["Attachments"][0];
    assert_eq!(att["FileName"], "budget.bin");
    assert_eq!(att["ContentType"], "application/octet-stream");
    assert_eq!(att["Size"], BUDGET.len());
    assert_eq!(att["PartID"], "2");
    let inline = &m["Inline"][0];
    assert_eq!(inline["ContentID"], "logo@x");
    assert_eq!(inline["ContentType"], "image/png");
    assert_eq!(inline["PartID"], "1.2");

    // Fetching the message marked it read.
    let list = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(list["unread"], 0);
    assert_eq!(list["messages"][0]["Read"], true);

    let h = inbox
        .get_json(&format!("/api/v1/message/{id}/headers"), 200)
        .await;
    assert_eq!(h["Subject"], serde_json::json!(["Quarterly report"]));
    assert_eq!(
        h["Message-Id"],
        serde_json::json!(["<report-1@example.com>"])
    );
    let keys: Vec<_> = h.as_object().unwrap().keys().cloned().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "header keys are sorted");

    let (status, raw, headers) = inbox.get_bytes(&format!("/api/v1/message/{id}/raw")).await;
    assert_eq!(status, 200);
    assert_eq!(raw, MULTIPART, "raw source is byte-exact");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let (status, part, headers) = inbox
        .get_bytes(&format!("/api/v1/message/{id}/part/2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(part, BUDGET);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("budget.bin")
    );

    // `latest` works for every message route.
    let latest = inbox.get_json("/api/v1/message/latest", 200).await;
    assert_eq!(latest["ID"], id.as_str());
    let (status, raw, _) = inbox.get_bytes("/api/v1/message/latest/raw").await;
    assert_eq!((status, raw.as_slice()), (200, MULTIPART));
    let (status, part, _) = inbox.get_bytes("/api/v1/message/latest/part/2").await;
    assert_eq!((status, part.as_slice()), (200, BUDGET));

    // The HTML view carries the sandbox policy; the text view the text.
    let (status, html, headers) = inbox.get_bytes(&format!("/view/{id}.html")).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let html = String::from_utf8(html).unwrap();
    assert!(
        html.contains(&format!("/api/v1/message/{id}/part/1.2")),
        "cid: rewritten: {html}"
    );
    let (status, text, _) = inbox.get_bytes("/view/latest.txt").await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(text)
            .unwrap()
            .contains(".leading dot line")
    );

    let info = inbox.get_json("/api/v1/info", 200).await;
    assert_eq!(info["Messages"], 1);
}

#[tokio::test]
async fn paging_newest_first_and_pruning_to_max() {
    let inbox = Inbox::start(&["--max", "5"]);
    for n in 1..=8 {
        let raw = simple("a@example.com", "b@example.com", &format!("msg {n}"), "hi");
        smtp_send(inbox.smtp, "a@example.com", &["b@example.com"], &raw).await;
    }
    let list = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(list["total"], 5, "pruned to --max");
    assert_eq!(
        subjects(&list),
        ["msg 8", "msg 7", "msg 6", "msg 5", "msg 4"]
    );
    let page = inbox
        .get_json("/api/v1/messages?start=2&limit=2", 200)
        .await;
    assert_eq!(subjects(&page), ["msg 6", "msg 5"]);
    assert_eq!(page["start"], 2);
    assert_eq!(page["count"], 2);
    assert_eq!(page["messages_count"], 5);
    let past = inbox.get_json("/api/v1/messages?start=50", 200).await;
    assert_eq!(subjects(&past), Vec::<String>::new());
    // The pruned messages are gone from search too.
    let s = inbox
        .get_json("/api/v1/search?query=subject:msg", 200)
        .await;
    assert_eq!(s["messages_count"], 5);
}

#[tokio::test]
async fn search_read_marks_and_deletes() {
    let inbox = Inbox::start(&[]);
    let mails = [
        (
            "jane@shop.example",
            "orders@corp.example",
            "Your invoice 42",
            "Pay by Friday",
        ),
        (
            "news@list.example",
            "bob@corp.example",
            "Weekly newsletter",
            "Invoice tips inside",
        ),
        (
            "jane@shop.example",
            "bob@corp.example",
            "Shipping update",
            "Your parcel left",
        ),
    ];
    for (from, to, subject, body) in mails {
        let reply = smtp_send(inbox.smtp, from, &[to], &simple(from, to, subject, body)).await;
        assert!(reply.starts_with("250"));
    }
    let q = async |query: &str| search(&inbox, query).await;
    assert_eq!(
        q("from:jane@shop.example").await.0,
        ["Shipping update", "Your invoice 42"]
    );
    assert_eq!(
        q("to:bob").await.0,
        ["Shipping update", "Weekly newsletter"]
    );
    assert_eq!(q("subject:invoice").await.0, ["Your invoice 42"]);
    assert_eq!(
        q("invoice").await.0,
        ["Weekly newsletter", "Your invoice 42"],
        "subject or body"
    );
    assert_eq!(q("invoice -from:jane").await.0, ["Weekly newsletter"]);
    assert_eq!(
        q("subject:\"shipping update\"").await.0,
        ["Shipping update"]
    );
    assert_eq!(q("nomatchanywhere").await.0, Vec::<String>::new());
    let (_, v) = q("from:jane").await;
    assert_eq!(v["messages_count"], 2);
    assert_eq!(v["total"], 3);
    let ids: Vec<String> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_str().unwrap().to_owned())
        .collect();

    // Mark two read, then all unread again.
    let body = serde_json::json!({ "IDs": ids, "Read": true }).to_string();
    assert_eq!(
        inbox
            .send_body(Method::PUT, "/api/v1/messages", &body)
            .await,
        (200, "ok".into())
    );
    assert_eq!(inbox.get_json("/api/v1/messages", 200).await["unread"], 1);
    assert_eq!(q("is:read").await.0, ["Shipping update", "Your invoice 42"]);
    assert_eq!(q("is:unread").await.0, ["Weekly newsletter"]);
    let (status, _) = inbox
        .send_body(Method::PUT, "/api/v1/messages", r#"{"Read": false}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(inbox.get_json("/api/v1/messages", 200).await["unread"], 3);

    // Delete by search, by ID, then all.
    let r = inbox
        .client
        .delete(inbox.url("/api/v1/search?query=subject%3Anewsletter"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(inbox.get_json("/api/v1/messages", 200).await["total"], 2);
    let body = serde_json::json!({ "IDs": [ids[0]] }).to_string();
    assert_eq!(
        inbox
            .send_body(Method::DELETE, "/api/v1/messages", &body)
            .await
            .0,
        200
    );
    let left = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(left["total"], 1);
    assert_eq!(left["messages"][0]["ID"], ids[1].as_str());
    inbox
        .get_json(&format!("/api/v1/message/{}", ids[0]), 404)
        .await;
    assert_eq!(
        inbox
            .send_body(Method::DELETE, "/api/v1/messages", "")
            .await
            .0,
        200
    );
    let empty = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(
        (empty["total"].clone(), empty["unread"].clone()),
        (0.into(), 0.into())
    );
    assert_eq!(
        q("jane").await.0,
        Vec::<String>::new(),
        "deleted from the index too"
    );
}

/// The counts a search reports (`messages_count`, `messages_unread`) and its
/// pages, through the one-pass index path (words only) and the SQL path
/// (with a flag), while read marks and pruning change the totals.
#[tokio::test]
async fn search_counts_and_pages_stay_exact() {
    let inbox = Inbox::start(&["--max", "10"]);
    for n in 1..=12 {
        let from = if n % 2 == 1 {
            "odd@example.com"
        } else {
            "even@example.com"
        };
        let raw = simple(from, "b@example.com", &format!("msg {n}"), "hi");
        assert!(
            smtp_send(inbox.smtp, from, &["b@example.com"], &raw)
                .await
                .starts_with("250")
        );
    }
    let search = async |query: &str| {
        inbox
            .get_json(&format!("/api/v1/search?{query}"), 200)
            .await
    };
    let counts = |v: &Value| {
        (
            v["messages_count"].as_u64().unwrap(),
            v["messages_unread"].as_u64().unwrap(),
            v["total"].as_u64().unwrap(),
            v["unread"].as_u64().unwrap(),
        )
    };
    let ids_of = |v: &Value, subjects: &[&str]| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| subjects.contains(&m["Subject"].as_str().unwrap()))
            .map(|m| m["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = search("query=subject:msg").await;
    assert_eq!(counts(&all), (10, 10, 10, 10), "msgs 3..12 kept");
    let mark_read = async |ids: Vec<String>| {
        let body = serde_json::json!({ "IDs": ids, "Read": true }).to_string();
        assert_eq!(
            inbox
                .send_body(Method::PUT, "/api/v1/messages", &body)
                .await
                .0,
            200
        );
    };

    // Few read: the unread matches are counted as matches minus read ones.
    mark_read(ids_of(&all, &["msg 12", "msg 11", "msg 10"])).await;
    assert_eq!(counts(&search("query=subject:msg").await), (10, 7, 10, 7));
    assert_eq!(counts(&search("query=from:odd").await), (5, 4, 10, 7));
    // Few unread: counted by intersecting with the unread ones.
    mark_read(ids_of(&all, &["msg 9", "msg 8", "msg 7", "msg 6", "msg 5"])).await;
    assert_eq!(counts(&search("query=from:odd").await), (5, 1, 10, 2));
    assert_eq!(
        counts(&search("query=subject:msg -from:odd").await),
        (5, 1, 10, 2)
    );
    // The SQL path (a flag) agrees.
    assert_eq!(
        counts(&search("query=subject:msg+is:unread").await),
        (2, 2, 10, 2)
    );
    assert_eq!(
        counts(&search("query=from:odd+is:read").await),
        (4, 0, 10, 2)
    );

    // Pages are slices of the matches, newest first.
    let page = search("query=subject:msg&start=2&limit=3").await;
    assert_eq!(subjects(&page), ["msg 10", "msg 9", "msg 8"]);
    assert_eq!(
        (page["count"].as_u64(), page["start"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(counts(&page), (10, 2, 10, 2));
    let past = search("query=subject:msg&start=10").await;
    assert_eq!(subjects(&past), Vec::<String>::new());
    assert_eq!(counts(&past).0, 10);
    let odd = search("query=from:odd&limit=2").await;
    assert_eq!(subjects(&odd), ["msg 11", "msg 9"]);

    // Pruning the two oldest (msgs 3 and 4, both unread) keeps the totals
    // exact: 10 kept, 2 + 2 new unread - 2 pruned unread.
    for n in 13..=14 {
        let raw = simple(
            "new@example.com",
            "b@example.com",
            &format!("msg {n}"),
            "hi",
        );
        smtp_send(inbox.smtp, "new@example.com", &["b@example.com"], &raw).await;
    }
    let list = inbox.get_json("/api/v1/messages", 200).await;
    assert_eq!(
        (list["total"].as_u64(), list["unread"].as_u64()),
        (Some(10), Some(2))
    );
    assert_eq!(counts(&search("query=subject:msg").await), (10, 2, 10, 2));
    assert_eq!(counts(&search("query=is:unread").await), (2, 2, 10, 2));
    assert_eq!(
        subjects(&search("query=is:unread").await),
        ["msg 14", "msg 13"]
    );
}

/// `from:`, `to:`, `cc:` and `bcc:` go through the address index: a run of
/// whole words of one mailbox (name, then address), the last one a prefix,
/// diacritics and case folded; never a fragment inside a word.
#[tokio::test]
async fn address_searches_match_word_runs_of_one_mailbox() {
    let inbox = Inbox::start(&[]);
    let mails: [(&str, &[&str], &str); 3] = [
        (
            "From: José García <jg@shop.example>\r\n\
             To: Bob <bob@corp.example>\r\nCc: Dave <dave@other.example>\r\n\
             Subject: one\r\n\r\nhi\r\n",
            &[
                "bob@corp.example",
                "dave@other.example",
                "hidden@secret.example",
            ],
            "one",
        ),
        (
            "From: Ann <ann@corp.example>\r\nTo: jg@shop.example\r\n\
             Subject: two\r\n\r\nhi\r\n",
            &["jg@shop.example"],
            "two",
        ),
        (
            "From: janet@shop.example\r\nTo: Bob <bob@corp.example>, x@y.example\r\n\
             Subject: three\r\n\r\nhi\r\n",
            &["bob@corp.example", "x@y.example"],
            "three",
        ),
    ];
    for (raw, to, _) in mails {
        let reply = smtp_send(inbox.smtp, "sender@example.com", to, raw.as_bytes()).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let q = async |query: &str| {
        let (s, v) = search(&inbox, query).await;
        assert_eq!(
            v["messages_count"].as_u64(),
            Some(s.len() as u64),
            "{query}"
        );
        s
    };
    assert_eq!(q("from:jg@shop.example").await, ["one"]);
    assert_eq!(q("from:jose").await, ["one"], "diacritics folded");
    assert_eq!(q("from:\"GARCÍA jg\"").await, ["one"], "name then address");
    assert_eq!(
        q("from:shop").await,
        ["one", "three"],
        "a word of the domain"
    );
    assert_eq!(q("from:shop.example").await, ["one", "three"]);
    assert_eq!(q("from:jan").await, ["three"], "the last word is a prefix");
    assert_eq!(q("from:anet").await, Vec::<String>::new(), "no infix");
    assert_eq!(q("from:jg@shop.ex").await, ["one"]);
    assert_eq!(q("from:jg@shopx").await, Vec::<String>::new());
    assert_eq!(q("to:jg@shop.example").await, ["two"], "not From");
    assert_eq!(q("to:bob").await, ["one", "three"]);
    assert_eq!(
        q("to:y.example").await,
        ["three"],
        "any mailbox of the field"
    );
    assert_eq!(q("cc:dave@other").await, ["one"]);
    assert_eq!(q("cc:bob").await, Vec::<String>::new());
    assert_eq!(
        q("bcc:hidden@secret.example").await,
        ["one"],
        "envelope only"
    );
    assert_eq!(q("to:hidden").await, Vec::<String>::new());
    // Mixed with words, negations and flags (both search paths).
    assert_eq!(q("to:bob -from:janet").await, ["one"]);
    assert_eq!(q("hi -to:bob").await, ["two"]);
    assert_eq!(q("-to:bob").await, ["two"], "negations only: SQL path");
    assert_eq!(q("to:bob is:unread").await, ["one", "three"]);
    assert_eq!(q("to:bob -cc:dave two").await, Vec::<String>::new());
    assert_eq!(q("from:@@").await, Vec::<String>::new());
    assert_eq!(q("-from:@@ one").await, ["one"]);
}

/// A database made before the address index existed gets it filled from
/// the stored addresses when it is opened.
#[tokio::test]
async fn address_index_is_built_for_an_older_database() {
    let (_dir, db) = database_file();
    let db = db.as_str();
    let mut first = Inbox::start(&["--database", db]);
    smtp_send(first.smtp, "a@example.com", &["b@example.com"], MULTIPART).await;
    let raw = simple("zed@old.example", "b@example.com", "older", "x");
    smtp_send(first.smtp, "zed@old.example", &["b@example.com"], &raw).await;
    assert!(first.terminate().success());
    {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("DROP TABLE addr").unwrap();
    }
    let second = Inbox::start(&["--database", db]);
    let s = second
        .get_json("/api/v1/search?query=from:zed%40old", 200)
        .await;
    assert_eq!(subjects(&s), ["older"]);
    let s = second.get_json("/api/v1/search?query=to:carol", 200).await;
    assert_eq!(subjects(&s), ["Quarterly report"]);
    let s = second.get_json("/api/v1/search?query=is:unread", 200).await;
    assert_eq!(
        (s["messages_count"].as_u64(), s["messages_unread"].as_u64()),
        (Some(2), Some(2))
    );
}

/// A database path in a new temporary directory, removed with the guard.
/// Raw sources are stored LZ4-packed when that saves space and as received
/// when it does not; both, and rows from a database made before packing
/// existed, read back byte-exact and stay searchable.
#[tokio::test]
async fn raw_sources_are_packed_when_that_pays_and_read_back_byte_exact() {
    let (_dir, db) = database_file();
    let db = db.as_str();
    let text: String = (0..300)
        .map(|i| format!("line {i} of the report\r\n"))
        .collect();
    let packable = simple("a@example.com", "b@example.com", "packable", &text);
    // Printable noise: nothing for LZ4 to find.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..8000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 76 == 75 {
                '\n'
            } else {
                (b'!' + (x % 94) as u8) as char
            }
        })
        .collect::<String>()
        .replace('\n', "\r\n");
    let noisy = simple("a@example.com", "b@example.com", "noisy", &noise);
    let mut first = Inbox::start(&["--database", db]);
    smtp_send(first.smtp, "a@example.com", &["b@example.com"], &packable).await;
    smtp_send(first.smtp, "a@example.com", &["b@example.com"], &noisy).await;
    assert!(first.terminate().success());
    let stored = |c: &rusqlite::Connection| -> Vec<(String, i64, i64, bool)> {
        c.prepare(
            "SELECT m.subject, m.size, length(r.data), r.packed FROM messages m \
             JOIN raw r ON r.id = m.id ORDER BY m.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    {
        let c = rusqlite::Connection::open(db).unwrap();
        let rows = stored(&c);
        assert_eq!((rows[0].0.as_str(), rows[0].3), ("packable", true));
        assert_eq!(rows[0].1, packable.len() as i64);
        assert!(rows[0].2 * 4 < rows[0].1, "packed to a quarter: {rows:?}");
        assert_eq!((rows[1].0.as_str(), rows[1].3), ("noisy", false));
        assert_eq!(rows[1].2, noisy.len() as i64, "kept as received");
        // Make it a database from before packing: sources as received, no
        // `packed` column.
        c.execute(
            "UPDATE raw SET data = ?1, packed = 0 WHERE id = 1",
            [&packable],
        )
        .unwrap();
        c.execute_batch("ALTER TABLE raw DROP COLUMN packed")
            .unwrap();
    }
    let mut second = Inbox::start(&["--database", db]);
    let again = simple("a@example.com", "b@example.com", "packable again", &text);
    smtp_send(second.smtp, "a@example.com", &["b@example.com"], &again).await;
    let list = second.get_json("/api/v1/messages", 200).await;
    assert_eq!(subjects(&list), ["packable again", "noisy", "packable"]);
    for (m, sent) in list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&again, &noisy, &packable])
    {
        let id = m["ID"].as_str().unwrap();
        let (status, raw, _) = second.get_bytes(&format!("/api/v1/message/{id}/raw")).await;
        assert_eq!((status, &raw), (200, sent), "{}", m["Subject"]);
        assert_eq!(m["Size"], sent.len());
    }
    let s = second.get_json("/api/v1/search?query=report", 200).await;
    assert_eq!(subjects(&s), ["packable again", "packable"]);
    assert!(second.terminate().success());
    let c = rusqlite::Connection::open(db).unwrap();
    let rows = stored(&c);
    assert_eq!(
        rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        [false, false, true],
        "older rows stay as they were, the new one is packed"
    );
}

fn database_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db").to_str().unwrap().to_owned();
    (dir, db)
}

/// What a search finds: the subjects, sorted, and the whole answer.
async fn search(inbox: &Inbox, query: &str) -> (Vec<String>, Value) {
    let v = inbox
        .get_json(&format!("/api/v1/search?query={}", urlencode(query)), 200)
        .await;
    let mut s = subjects(&v);
    s.sort();
    (s, v)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn unknown_ids_are_404_and_malformed_requests_400() {
    let inbox = Inbox::start(&[]);
    smtp_send(
        inbox.smtp,
        "a@example.com",
        &["b@example.com"],
        &simple("a@example.com", "b@example.com", "one", "x"),
    )
    .await;
    let missing = "AAAAAAAAAAAAAAAAAAAAAA";
    for path in [
        format!("/api/v1/message/{missing}"),
        format!("/api/v1/message/{missing}/headers"),
        format!("/api/v1/message/{missing}/raw"),
        format!("/api/v1/message/{missing}/part/1"),
        "/api/v1/message/latest/part/7".into(),
        format!("/view/{missing}.html"),
        "/api/v1/nosuchroute".into(),
    ] {
        let v = inbox.get_json(&path, 404).await;
        assert!(v["Error"].is_string(), "{path}: JSON error, got {v}");
    }
    for path in [
        "/api/v1/message/bad%20id",
        "/api/v1/message/x.y/raw",
        "/api/v1/message/latest/part/1..2",
        "/api/v1/message/latest/part/abc",
        "/api/v1/messages?start=-1",
        "/api/v1/messages?limit=many",
        "/api/v1/messages?start=99999999999999999999999",
        "/api/v1/search",
        "/api/v1/search?query=",
        "/api/v1/search?query=%20%20",
        "/api/v1/search?query=a&start=x",
    ] {
        let v = inbox.get_json(path, 400).await;
        assert!(v["Error"].is_string(), "{path}: JSON error, got {v}");
    }
    for (method, body) in [
        (Method::PUT, "{not json"),
        (Method::PUT, r#"{"IDs": "one", "Read": true}"#),
        (Method::DELETE, r#"{"IDs": ["bad id!"]}"#),
        (Method::DELETE, "[1,2]"),
    ] {
        let (status, text) = inbox
            .send_body(method.clone(), "/api/v1/messages", body)
            .await;
        assert_eq!(status, 400, "{method} {body}: {text}");
        assert!(text.contains("\"Error\""), "{text}");
    }
    // Hostile search syntax is a query, not an FTS5 or SQL error.
    for query in [
        "\"",
        "a OR",
        "NEAR(",
        "*",
        "subject:",
        "') OR 1=1 --",
        "from:\"unterminated",
        "-",
        "!!",
    ] {
        let r = inbox
            .client
            .get(inbox.url(&format!("/api/v1/search?query={}", urlencode(query))))
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 200 || r.status() == 400,
            "{query:?}: {}",
            r.status()
        );
    }
    // Nothing was lost along the way.
    assert_eq!(inbox.get_json("/api/v1/messages", 200).await["total"], 1);
}

#[tokio::test]
async fn persistent_database_survives_graceful_restart() {
    let (_dir, db) = database_file();
    let db = db.as_str();
    let mut first = Inbox::start(&["--database", db]);
    smtp_send(first.smtp, "a@example.com", &["b@example.com"], MULTIPART).await;
    let status = first.terminate();
    assert!(
        status.success(),
        "SIGTERM stops both servers cleanly: {status}"
    );
    let second = Inbox::start(&["--db-file", db]);
    let list = second.get_json("/api/v1/messages", 200).await;
    assert_eq!(list["total"], 1);
    let (_, raw, _) = second.get_bytes("/api/v1/message/latest/raw").await;
    assert_eq!(raw, MULTIPART);
    let s = second.get_json("/api/v1/search?query=budget", 200).await;
    assert_eq!(s["messages_count"], 1, "the index persisted too");
}

#[tokio::test]
async fn smtp_auth_options() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // Credentials required; PLAIN allowed without TLS by the option.
    let inbox = Inbox::start(&["--smtp-auth", "ann:secret", "--smtp-auth-allow-insecure"]);
    let talk = async |lines: &[&str]| -> Vec<String> {
        let s = tokio::net::TcpStream::connect(inbox.smtp).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut replies = Vec::new();
        let read_reply = async |r: &mut BufReader<_>| {
            loop {
                let mut line = String::new();
                tokio::time::timeout(std::time::Duration::from_secs(10), r.read_line(&mut line))
                    .await
                    .unwrap()
                    .unwrap();
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line;
                }
            }
        };
        read_reply(&mut r).await;
        for l in lines {
            w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
            replies.push(read_reply(&mut r).await);
        }
        replies
    };
    let r = talk(&["EHLO x", "MAIL FROM:<a@example.com>"]).await;
    assert!(r[1].starts_with("530"), "auth required: {r:?}");
    // base64("\0ann\0wrong") and base64("\0ann\0secret")
    let r = talk(&["EHLO x", "AUTH PLAIN AGFubgB3cm9uZw=="]).await;
    assert!(r[1].starts_with("535"), "{r:?}");
    let r = talk(&[
        "EHLO x",
        "AUTH PLAIN AGFubgBzZWNyZXQ=",
        "MAIL FROM:<a@example.com>",
    ])
    .await;
    assert!(r[1].starts_with("235") && r[2].starts_with("250"), "{r:?}");
    drop(inbox);

    let any = Inbox::start(&["--smtp-auth-accept-any", "--smtp-auth-allow-insecure"]);
    let reply = smtp_send(
        any.smtp,
        "a@example.com",
        &["b@example.com"],
        &simple("a@example.com", "b@example.com", "no auth needed", "x"),
    )
    .await;
    assert!(reply.starts_with("250"), "accept-any does not require AUTH");
}
