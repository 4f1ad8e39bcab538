//! tower's own layers work unchanged in stacks with ours: `Timeout`,
//! `ConcurrencyLimit`, `LoadShed`, `Buffer`, and a user's axum-style
//! `from_fn` middleware; their errors become the replies the server sends
//! (`smtpsrv::error_reply`), and our refusals pass through them intact.

use std::sync::Arc;
use std::time::Duration;

use smtpsrv::proto::MailParams;
use smtpsrv::{
    BoxError, Context, Envelope, Greeting, Identity, MailFrom, Reply, SessionInfo, error_reply,
};
use smtpsrv_middleware::StageData;
use smtpsrv_middleware::rate_limit::{Quota, RateLimitLayer};
use smtpsrv_middleware::require_auth::RequireAuthLayer;
use smtpsrv_middleware::size::SizeLimitLayer;
use smtpsrv_middleware::trace::TraceLayer;
use tokio::sync::Notify;
use tower::layer::layer_fn;
use tower::{Service, ServiceBuilder, ServiceExt};

fn session(identity: Option<&str>) -> Arc<SessionInfo> {
    let mut s = SessionInfo::new(
        "192.0.2.1:4000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    )
    .with_greeting(Greeting::Ehlo("client.example".into()));
    if let Some(id) = identity {
        s = s.with_identity(Identity::new(id));
    }
    Arc::new(s)
}

fn mail(identity: Option<&str>) -> MailFrom {
    MailFrom::new(
        session(identity),
        Some("a@example.org".parse().unwrap()),
        MailParams::default(),
    )
}

fn message(body: &str) -> Context {
    let env = Envelope::new(
        Some("a@example.org".parse().unwrap()),
        MailParams::default(),
    );
    Context::new(
        session(Some("ann")),
        env,
        format!("Subject: x\r\n\r\n{body}\r\n").into(),
    )
}

async fn reply<S, R>(svc: &mut S, req: R) -> Reply
where
    S: Service<R, Response = Reply>,
    S::Error: Into<BoxError>,
{
    match svc.ready().await {
        Ok(svc) => svc
            .call(req)
            .await
            .unwrap_or_else(|e| error_reply(e.into())),
        Err(e) => error_reply(e.into()),
    }
}

fn status(r: &Reply) -> String {
    format!("{} {}", r.code(), r.status().unwrap())
}

#[tokio::test(start_paused = true)]
async fn timeout_errors_become_451_and_refusals_pass_through() {
    let mut svc = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .timeout(Duration::from_millis(50))
        .layer(RequireAuthLayer::new())
        .service_fn(|_: MailFrom| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(Reply::ok())
        });
    assert_eq!(
        status(&reply(&mut svc, mail(Some("ann"))).await),
        "451 4.4.7"
    );
    assert_eq!(status(&reply(&mut svc, mail(None)).await), "530 5.7.0");
}

#[tokio::test]
async fn concurrency_limit_waits_and_load_shed_refuses() {
    let gate = Arc::new(Notify::new());
    let handler = {
        let gate = gate.clone();
        tower::service_fn(move |_: MailFrom| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, BoxError>(Reply::ok())
            }
        })
    };
    let limited = ServiceBuilder::new()
        .concurrency_limit(1)
        .layer(RateLimitLayer::per_ip(Quota::per(
            100,
            Duration::from_secs(1),
        )))
        .service(handler);

    // ConcurrencyLimit: a second caller is not ready while the first runs.
    let mut first = limited.clone();
    let in_flight = tokio::spawn(async move {
        let r: Result<Reply, BoxError> = first.ready().await.unwrap().call(mail(None)).await;
        r.unwrap()
    });
    tokio::task::yield_now().await;
    let mut second = limited.clone();
    let waiting = tokio::time::timeout(Duration::from_millis(50), second.ready()).await;
    assert!(waiting.is_err(), "the second call waits for a permit");

    // LoadShed in front: the same situation is answered at once.
    let mut shed = ServiceBuilder::new().load_shed().service(limited.clone());
    assert_eq!(status(&reply(&mut shed, mail(None)).await), "451 4.3.2");

    gate.notify_one();
    assert_eq!(in_flight.await.unwrap().code(), 250);
    gate.notify_one();
    assert_eq!(reply(&mut second, mail(None)).await.code(), 250);
}

#[tokio::test]
async fn buffer_keeps_our_refusals_intact() {
    let mut svc = ServiceBuilder::new()
        .buffer(8)
        .layer(SizeLimitLayer::new(40))
        .service_fn(|_: Context| async { Ok::<_, BoxError>(Reply::ok()) });
    assert_eq!(reply(&mut svc, message("short")).await.code(), 250);
    let refused = reply(&mut svc, message("far too long for the policy")).await;
    assert_eq!(status(&refused), "552 5.3.4");
}

/// An axum-style `from_fn` middleware as a user would write it with
/// `layer_fn` and `service_fn`: it refuses some content itself and tags the
/// rest with a header before calling the next service.
fn content_filter<S>(inner: S) -> impl Service<Context, Response = Reply, Error = BoxError> + Clone
where
    S: Service<Context, Response = Reply, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    tower::service_fn(move |mut ctx: Context| {
        let mut next = inner.clone();
        async move {
            if ctx
                .message()?
                .windows(6)
                .any(|w| w.eq_ignore_ascii_case(b"casino"))
            {
                return Err::<Reply, BoxError>(Box::new(Reply::new(
                    554,
                    (5, 7, 1),
                    "Content refused",
                )));
            }
            ctx.prepend_header("X-Filtered: yes\r\n");
            next.ready().await?.call(ctx).await
        }
    })
}

#[tokio::test]
async fn user_from_fn_middleware_composes_with_ours() {
    let mut svc = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(layer_fn(content_filter))
        .layer(SizeLimitLayer::new(1000))
        .service_fn(|ctx: Context| async move {
            let filtered = ctx.message()?.starts_with(b"X-Filtered: yes\r\n");
            Ok::<_, BoxError>(if filtered {
                Reply::ok()
            } else {
                Reply::new(451, (4, 3, 0), "unfiltered")
            })
        });
    assert_eq!(reply(&mut svc, message("Hello")).await.code(), 250);
    assert_eq!(
        status(&reply(&mut svc, message("Best CASINO deals")).await),
        "554 5.7.1"
    );
}
