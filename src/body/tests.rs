use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::*;

async fn collect(body: &Body) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let mut chunks = body.chunks();
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn spill_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn in_memory_body_is_zero_copy_and_prepends_by_rewriting() {
    let bytes = Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n");
    let mut body = Body::from(bytes.clone());
    assert_eq!(body.as_bytes().unwrap().as_ptr(), bytes.as_ptr());
    body.prepend(b"X-A: 1\r\n");
    assert_eq!(
        &body.as_bytes().unwrap()[..],
        b"X-A: 1\r\nSubject: x\r\n\r\nhi\r\n"
    );
    assert_eq!(body.len(), Some(26));
    assert_eq!(
        collect(&body).await.unwrap(),
        body.as_bytes().unwrap().to_vec()
    );
}

#[tokio::test]
async fn spilled_body_reads_every_way_and_its_file_goes_with_the_last_clone() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::create(dir.path()).unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for part in content.chunks(70_000) {
        spill.write(Bytes::copy_from_slice(part)).await.unwrap();
    }
    let mut body = spill.finish().await.unwrap();
    assert!(body.is_spilled());
    assert_eq!(spill_count(dir.path()), 1);
    body.prepend(b"X-B: 2\r\n");
    body.prepend(b"X-A: 1\r\n");
    let mut expected = b"X-A: 1\r\nX-B: 2\r\n".to_vec();
    expected.extend_from_slice(&content);
    assert_eq!(body.len(), Some(expected.len() as u64));
    assert_eq!(collect(&body).await.unwrap(), expected);
    let mut read = Vec::new();
    body.reader().read_to_end(&mut read).await.unwrap();
    assert_eq!(read, expected);
    let clone = body.clone();
    assert_eq!(&body.as_bytes().unwrap()[..], &expected[..]);
    body.prepend(b"X-C: 3\r\n");
    assert!(
        body.as_bytes()
            .unwrap()
            .starts_with(b"X-C: 3\r\nX-A: 1\r\n")
    );
    drop(body);
    assert_eq!(spill_count(dir.path()), 1, "a clone still holds the file");
    assert_eq!(collect(&clone).await.unwrap(), expected);
    drop(clone);
    assert_eq!(spill_count(dir.path()), 0);
}

#[tokio::test]
async fn unfinished_spill_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::create(dir.path()).unwrap();
    spill.write(Bytes::from_static(b"partial")).await.unwrap();
    assert_eq!(spill_count(dir.path()), 1);
    drop(spill);
    assert_eq!(spill_count(dir.path()), 0);
}

#[tokio::test]
async fn streaming_body_ends_only_on_finish() {
    let (mut tx, mut body) = channel(2);
    body.prepend(b"X-A: 1\r\n");
    assert_eq!(body.len(), None);
    let feeder = tokio::spawn(async move {
        for i in 0..10u8 {
            assert!(tx.send(Bytes::from(vec![b'a' + i; 1000])).await);
        }
        tx.finish().await;
    });
    let got = collect(&body).await.unwrap();
    feeder.await.unwrap();
    assert_eq!(got.len(), 8 + 10_000);
    assert!(got.starts_with(b"X-A: 1\r\naaa"));
    // One reader only.
    assert!(matches!(collect(&body).await, Err(BodyError::AlreadyTaken)));
}

#[tokio::test]
async fn streaming_failures_are_errors_not_ends() {
    let (mut tx, body) = channel(4);
    assert!(tx.send(Bytes::from_static(b"first")).await);
    tx.fail(BodyError::TooLarge);
    let mut chunks = body.chunks();
    assert_eq!(&chunks.next().await.unwrap().unwrap()[..], b"first");
    assert!(matches!(
        chunks.next().await,
        Some(Err(BodyError::TooLarge))
    ));
    assert!(chunks.next().await.is_none());

    // A sender dropped without finishing (connection gone) is an abort.
    let (tx, body) = channel(4);
    drop(tx);
    let mut reader = body.reader();
    let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<BodyError>());
    assert!(matches!(inner, Some(BodyError::Aborted)), "{err:?}");
}

#[tokio::test]
async fn streaming_body_applies_back_pressure_and_sees_the_reader_go() {
    let (mut tx, body) = channel(2);
    assert!(tx.send(Bytes::from_static(b"1")).await);
    assert!(tx.send(Bytes::from_static(b"2")).await);
    // Full: a third send waits until the reader takes one.
    let third = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        tx.send(Bytes::from_static(b"3")),
    )
    .await;
    assert!(third.is_err(), "send did not wait for room");
    drop(body);
    assert!(!tx.send(Bytes::from_static(b"4")).await);
}

fn test_context(body: Body) -> crate::Context {
    let session = std::sync::Arc::new(crate::SessionInfo::new(
        "192.0.2.1:5000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    ));
    crate::Context::with_body(session, crate::Envelope::default(), body)
}

#[tokio::test]
async fn whole_message_accessors_are_errors_on_a_streaming_body_never_panics() {
    let (tx, body) = channel(2);
    let ctx = test_context(body);
    assert!(matches!(ctx.message(), Err(BodyError::NotBuffered)));
    assert!(matches!(ctx.body().as_bytes(), Err(BodyError::NotBuffered)));
    let parsed = ctx.parse().map(|_| ()).unwrap_err();
    assert_eq!(
        parsed,
        crate::email::ParseError::Unreadable(BodyError::NotBuffered)
    );
    // Passed on with `?`, both are temporary failures, not 554.
    assert_eq!(crate::error_reply(Box::new(parsed)).code(), 451);
    let err = ctx.message().unwrap_err();
    assert_eq!(crate::error_reply(Box::new(err)).code(), 451);
    assert_eq!(ctx.size(), 0);
    assert!(ctx.body().in_memory().is_none());
    assert!(matches!(
        ctx.clone().into_message(),
        Err(BodyError::NotBuffered)
    ));
    drop(tx);
}

#[tokio::test]
async fn a_spilled_file_removed_from_under_the_server_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut spill = Spill::create(dir.path()).unwrap();
    spill
        .write(Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n"))
        .await
        .unwrap();
    let body = spill.finish().await.unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let ctx = test_context(body);
    assert!(matches!(ctx.message(), Err(BodyError::Io(_))));
    assert!(matches!(
        ctx.parse().map(|_| ()),
        Err(crate::email::ParseError::Unreadable(BodyError::Io(_)))
    ));
    assert!(ctx.body().bytes().await.is_err());
    let mut reader = ctx.reader();
    assert!(reader.read_to_end(&mut Vec::new()).await.is_err());
}

fn policy(dir: &std::path::Path, threshold: usize) -> Arc<SpillPolicy> {
    Arc::new(SpillPolicy {
        threshold,
        dir: dir.to_owned(),
    })
}

#[tokio::test]
async fn buffering_a_streaming_body_keeps_the_spill_policy() {
    let dir = tempfile::tempdir().unwrap();
    // Small: in memory.
    let (mut tx, body) = channel(4);
    let mut body = body.with_spill_policy(policy(dir.path(), 1000));
    body.prepend(b"X-A: 1\r\n");
    let feeder = tokio::spawn(async move {
        assert!(
            tx.send(Bytes::from_static(b"Subject: s\r\n\r\nhi\r\n"))
                .await
        );
        tx.finish().await;
    });
    body.buffer().await.unwrap();
    feeder.await.unwrap();
    assert!(!body.is_spilled() && !body.is_streaming());
    assert_eq!(
        &body.as_bytes().unwrap()[..],
        b"X-A: 1\r\nSubject: s\r\n\r\nhi\r\n"
    );
    assert_eq!(spill_count(dir.path()), 0);

    // Past the threshold: spilled, the file gone with the body.
    let (mut tx, body) = channel(4);
    let mut body = body.with_spill_policy(policy(dir.path(), 1000));
    let feeder = tokio::spawn(async move {
        for i in 0..10u8 {
            assert!(tx.send(Bytes::from(vec![b'a' + i; 500])).await);
        }
        tx.finish().await;
    });
    body.buffer().await.unwrap();
    feeder.await.unwrap();
    assert!(body.is_spilled());
    assert_eq!(body.len(), Some(5000));
    assert_eq!(spill_count(dir.path()), 1);
    let whole = body.as_bytes().unwrap().clone();
    assert!(whole.starts_with(&[b'a'; 500]) && whole.ends_with(&[b'j'; 500]));
    drop(body);
    assert_eq!(spill_count(dir.path()), 0);

    // A transfer that fails while buffering: the error, and no file left.
    let (mut tx, body) = channel(4);
    let mut body = body.with_spill_policy(policy(dir.path(), 10));
    assert!(tx.send(Bytes::from(vec![b'x'; 100])).await);
    tx.fail(BodyError::Aborted);
    assert!(matches!(body.buffer().await, Err(BodyError::Aborted)));
    assert_eq!(spill_count(dir.path()), 0);
}

#[tokio::test]
async fn a_limit_turns_reading_past_it_into_too_large() {
    let (mut tx, mut body) = channel(4);
    body.limit(1500);
    let feeder = tokio::spawn(async move {
        for _ in 0..3 {
            if !tx.send(Bytes::from(vec![b'x'; 1000])).await {
                return;
            }
        }
        tx.finish().await;
    });
    let mut chunks = body.chunks();
    assert_eq!(chunks.next().await.unwrap().unwrap().len(), 1000);
    assert!(matches!(
        chunks.next().await,
        Some(Err(BodyError::TooLarge))
    ));
    assert!(chunks.next().await.is_none(), "no end after the failure");
    drop(chunks);
    feeder.await.unwrap();
    assert_eq!(
        crate::error_reply(Box::new(BodyError::TooLarge)).code(),
        552
    );

    // A body of known size over its limit: every whole accessor says so.
    let mut body = Body::from(Bytes::from(vec![b'y'; 100]));
    body.limit(99);
    assert!(matches!(body.as_bytes(), Err(BodyError::TooLarge)));
    assert!(matches!(body.bytes().await, Err(BodyError::TooLarge)));
    assert!(matches!(collect(&body).await, Err(BodyError::TooLarge)));
    body.limit(1000);
    assert!(
        body.as_bytes().is_err(),
        "a later, larger limit never widens"
    );
}
