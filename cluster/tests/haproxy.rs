//! The cluster through HAProxy: three mailsink instances behind the shipped
//! deploy/cluster/haproxy.cfg, Redis rate limits, JetStream hand-off. Load,
//! a shared per-IP limit, `kill -9` of an instance, NATS stopped and
//! restarted, the consumer killed and restarted. Run one at a time (they
//! are load tests on a small machine).

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

// Held across awaits on purpose: each test has its own runtime.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn js(cluster: &Cluster) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(nats_client(&cluster.nats.url()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_haproxy_every_250_once_and_the_ip_limit_holds_across_instances() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let per_minute = 30;
    let cluster = Cluster::start(per_minute);
    // 80 clients on their own loopback addresses (127.0.1.N), 25 messages
    // each: under every client's quota. 2000 messages.
    let mut clients = Vec::new();
    for c in 0..80u8 {
        let ip: IpAddr = format!("127.0.1.{}", c + 1).parse().unwrap();
        clients.push(tokio::spawn(send_all(
            cluster.addr(),
            ip,
            tokens(&format!("c{c}"), 25),
            5,
            Duration::from_millis(100),
        )));
    }
    let mut attempts = Vec::new();
    for c in clients {
        attempts.extend(
            tokio::time::timeout(Duration::from_secs(120), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let js = js(&cluster).await;
    let in_stream = attempts_in_stream(&js, "SMTP").await;
    let duplicates = check_no_loss(&attempts, &in_stream);
    assert_eq!(duplicates, 0, "no fault, no duplicate");
    let refused = attempts.iter().filter(|a| a.seen != Seen::Accepted).count();
    assert_eq!(
        refused,
        0,
        "{:?}\n{}",
        attempts.iter().find(|a| a.seen != Seen::Accepted),
        cluster.logs()
    );
    let instances: HashSet<_> = attempts.iter().map(|a| a.instance.clone()).collect();
    assert_eq!(instances.len(), 3, "HAProxy spread the load: {instances:?}");
    println!(
        "{} messages through HAProxy, each in the stream once",
        attempts.len()
    );

    // One client IP, 90 messages on 9 connections spread over the three
    // instances: it gets its quota once, not three times.
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..9 {
        clients.push(tokio::spawn(send_all(
            cluster.addr(),
            "127.0.2.1".parse().unwrap(),
            tokens(&format!("limited{c}"), 10),
            1,
            Duration::ZERO,
        )));
    }
    let mut limited = Vec::new();
    for c in clients {
        limited.extend(
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let accepted = limited.iter().filter(|a| a.seen == Seen::Accepted).count();
    let refused_450 = limited
        .iter()
        .filter(|a| a.seen == Seen::Refused(450))
        .count();
    let served_by: HashSet<_> = limited.iter().map(|a| a.instance.clone()).collect();
    let refill = (elapsed * f64::from(per_minute) / 60.0).ceil() as usize;
    assert!(served_by.len() >= 2, "{served_by:?}");
    assert!(
        accepted >= per_minute as usize && accepted <= per_minute as usize + refill,
        "{accepted} accepted of 90 in {elapsed:.1}s (quota {per_minute}, refill {refill})\n{}",
        cluster.logs()
    );
    assert_eq!(accepted + refused_450, 90);

    // Redis stopped: mailsink's default policy fails open (a warning and
    // a count), so the client over its quota gets through, and promptly.
    let mut cluster = cluster;
    cluster.redis.stop();
    let start = Instant::now();
    let open = tokio::time::timeout(
        Duration::from_secs(30),
        send_all(
            cluster.addr(),
            "127.0.2.1".parse().unwrap(),
            tokens("redis-down", 5),
            1,
            Duration::ZERO,
        ),
    )
    .await
    .expect("sessions never hang while Redis is down");
    assert!(
        open.iter().all(|a| a.seen == Seen::Accepted),
        "{open:?}\n{}",
        cluster.logs()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance_and_of_the_consumer_mid_load_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(1_000_000);
    let maildir = cluster.dir.path().join("maildir");
    let consumer_bin = example_binary("maildir_consumer");
    let consumer = |log: &str| {
        spawn_logged(
            "maildir_consumer",
            Command::new(&consumer_bin)
                .args(["--nats", &cluster.nats.url(), "--ack-wait", "2"])
                .arg("--maildir")
                .arg(&maildir)
                .env("RUST_LOG", "warn"),
            &cluster.dir.path().join(log),
        )
    };
    let mut consumer_proc = consumer("consumer1.log");
    let mut clients = Vec::new();
    for c in 0..20 {
        clients.push(tokio::spawn(send_all(
            cluster.addr(),
            "127.0.0.1".parse().unwrap(),
            tokens(&format!("k{c}"), 50),
            20,
            Duration::from_millis(100),
        )));
    }
    // Wait until a good part is in, then kill one instance and the consumer.
    let js = js(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = js.get_stream("SMTP").await.unwrap();
        if s.info().await.unwrap().state.messages >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.instances[1].kill();
    consumer_proc.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer_proc = consumer("consumer2.log");
    let mut attempts = Vec::new();
    for c in clients {
        attempts.extend(
            tokio::time::timeout(Duration::from_secs(120), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let in_stream = attempts_in_stream(&js, "SMTP").await;
    let duplicates = check_no_loss(&attempts, &in_stream);
    let broken = attempts.iter().filter(|a| a.seen == Seen::Broken).count();
    println!(
        "kill -9: {} attempts, {broken} broken by the kill, {duplicates} duplicates (stored but never acknowledged to the client), 0 acknowledged lost",
        attempts.len()
    );
    assert!(
        attempts.iter().any(|a| a.instance == "mx2.test"),
        "mx2 served before it died"
    );

    // The consumer ends with every message of the stream exactly once.
    let total = in_stream.values().sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count());
    while count() < total {
        assert!(
            Instant::now() < deadline,
            "Maildir has {} of {total}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redeliveries (ack wait 2 s) would add files: give them the time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(), total, "each message exactly once in the Maildir");
    drop(consumer_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_mid_load_gives_451s_never_250_without_ack_then_recovers() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(1_000_000);
    let mut clients = Vec::new();
    // Enough load that it is still running when NATS stops, on a fast
    // machine too (600 messages once finished before the stop).
    for c in 0..10 {
        clients.push(tokio::spawn(send_all(
            cluster.addr(),
            "127.0.0.1".parse().unwrap(),
            tokens(&format!("n{c}"), 400),
            60,
            Duration::from_millis(100),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.nats.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.nats.restart();
    let mut attempts = Vec::new();
    for c in clients {
        attempts.extend(
            tokio::time::timeout(Duration::from_secs(120), c)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let refused_451 = attempts
        .iter()
        .filter(|a| a.seen == Seen::Refused(451))
        .count();
    assert!(
        refused_451 > 0,
        "451s while NATS was down: {:?}\n{}",
        attempts
            .iter()
            .map(|a| format!("{:?}", a.seen))
            .collect::<std::collections::BTreeSet<_>>(),
        cluster.logs()
    );
    let js = js(&cluster).await;
    let in_stream = attempts_in_stream(&js, "SMTP").await;
    let duplicates = check_no_loss(&attempts, &in_stream);
    println!(
        "NATS down 2.5 s: {} attempts, {refused_451} answered 451, {duplicates} duplicates (published late, after the 451), every 250 in the stream once",
        attempts.len()
    );
}

/// What one session from `source` is told at MAIL FROM.
async fn mail_from_reply(addr: std::net::SocketAddr, source: IpAddr) -> String {
    use tokio::io::AsyncWriteExt;
    let (mut r, mut w, _) = open(addr, source).await.expect("session opens");
    w.write_all(b"MAIL FROM:<ann@client.test>\r\n")
        .await
        .unwrap();
    let (_, text) = read_reply(&mut r).await.unwrap();
    w.write_all(b"QUIT\r\n").await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailsink_redis_down_refuse_answers_451_4_7_0_promptly_and_recovers() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sink = spawn_logged(
        "mailsink",
        Command::new(example_binary("mailsink"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--discard"])
            .args(["--rate-limit", "1000", "--redis", &redis.url()])
            .args(["--redis-down", "refuse", "--threads", "1"])
            .env("RUST_LOG", "warn"),
        &dir.path().join("mailsink.log"),
    );
    wait_for_port(port);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client: IpAddr = "127.0.3.1".parse().unwrap();
    let log = || std::fs::read_to_string(dir.path().join("mailsink.log")).unwrap_or_default();

    let up = mail_from_reply(addr, client).await;
    assert!(up.starts_with("250 "), "{up}\n{}", log());

    // Redis gone: the store fails, the policy refuses, within the
    // store's 1 s bound (never a hang).
    redis.stop();
    let start = Instant::now();
    let down = tokio::time::timeout(Duration::from_secs(10), mail_from_reply(addr, client))
        .await
        .expect("the session never hangs while Redis is down");
    assert!(down.starts_with("451 4.7.0 "), "{down}\n{}", log());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Redis back on the same port: the connection manager reconnects.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let back = mail_from_reply(addr, client).await;
        if back.starts_with("250 ") {
            break;
        }
        assert!(Instant::now() < deadline, "not back: {back}\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
