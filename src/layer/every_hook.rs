//! [`HookLayer`]: one layer around every hook, through
//! [`Builder::hook_layer`](crate::Builder::hook_layer).

use std::sync::Arc;

use tower::util::BoxCloneService;
use tower::{Layer, Service};

use super::Accept;
use crate::config::HookFlags;
use crate::hooks::{Hooks, boxed_authenticator, boxed_hook};
use crate::info::Identity;
use crate::proto::Reply;
use crate::reply_conv::{BoxError, IntoReply};
use crate::stage::{Authenticate, Connect, Helo, MailFrom, RcptTo};

/// A stage hook as the server holds it, and as a [`HookLayer`] wraps it:
/// the user's service, its answer already turned into a [`Reply`].
pub type HookService<R> = BoxCloneService<R, Reply, BoxError>;

/// The authenticator as the server holds it, and as a [`HookLayer`] wraps
/// it: `Some(identity)` accepts, `None` refuses.
pub type AuthenticatorService = BoxCloneService<Authenticate, Option<Identity>, BoxError>;

/// A layer that can wrap every hook: a [`Layer`] for the service of each
/// stage ([`HookService`] of [`Connect`], [`Helo`], [`MailFrom`],
/// [`RcptTo`], and the [`AuthenticatorService`]) whose services keep what
/// the server needs of a hook (clonable, `Send`, an answer it can read).
///
/// Nothing to implement: every layer that fits is a `HookLayer`. In
/// practice that is a layer generic over the request (`impl<S, R>
/// Service<R> for Foo<S> where R: Stage`) that keeps the inner response
/// type, like tower's `TimeoutLayer` and the `smtpsrv-middleware` layers.
/// A layer that changes the response to a [`Reply`] cannot wrap the
/// authenticator, whose answer is an identity.
///
/// When a layer does not fit, the compiler names the stage it misses
/// (through [`StageLayer<Connect>`](StageLayer), for example): put a layer
/// made for one stage on that stage's hook instead.
pub trait HookLayer:
    StageLayer<Connect>
    + StageLayer<Helo>
    + StageLayer<MailFrom>
    + StageLayer<RcptTo>
    + Layer<
        AuthenticatorService,
        Service: Service<
            Authenticate,
            Response = Option<Identity>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
                     + Send
                     + 'static,
    > + Send
    + Sync
    + 'static
{
}

impl<L> HookLayer for L where
    L: StageLayer<Connect>
        + StageLayer<Helo>
        + StageLayer<MailFrom>
        + StageLayer<RcptTo>
        + Layer<
            AuthenticatorService,
            Service: Service<
                Authenticate,
                Response = Option<Identity>,
                Error: Into<BoxError>,
                Future: Send + 'static,
            > + Clone
                         + Send
                         + 'static,
        > + Send
        + Sync
        + 'static
{
}

/// A layer that fits the hook of stage `R` (one of the bounds of
/// [`HookLayer`], written once for the four stage hooks): its service
/// answers something the server reads as a reply, and is clonable and
/// `Send`. Nothing to implement: every such layer is one.
pub trait StageLayer<R>:
    Layer<
        HookService<R>,
        Service: Service<R, Response: IntoReply, Error: Into<BoxError>, Future: Send + 'static>
                     + Clone
                     + Send
                     + 'static,
    >
{
}

impl<R, L> StageLayer<R> for L where
    L: Layer<
            HookService<R>,
            Service: Service<
                R,
                Response: IntoReply,
                Error: Into<BoxError>,
                Future: Send + 'static,
            > + Clone
                         + Send
                         + 'static,
        >
{
}

/// Wraps the installed hooks in one layer.
type Wrap = dyn Fn(Hooks) -> Hooks + Send + Sync;

/// The layers given to [`Builder::hook_layer`](crate::Builder::hook_layer),
/// in the order given; applied when the server is built.
#[derive(Clone, Default)]
pub(crate) struct HookLayers(Vec<Arc<Wrap>>);

impl HookLayers {
    pub(crate) fn push<L: HookLayer>(&mut self, layer: L) {
        self.0.push(Arc::new(move |hooks| wrap(&layer, hooks)));
    }

    /// The hooks with every layer around them, the first given outermost
    /// (as in `ServiceBuilder`). A stage without a hook gets [`Accept`]
    /// inside the layers, so the layers see every stage; the authenticator
    /// is wrapped only when there is one.
    pub(crate) fn apply(&self, mut hooks: Hooks, flags: &mut HookFlags) -> Hooks {
        if self.0.is_empty() {
            return hooks;
        }
        hooks.connect.get_or_insert_with(|| boxed_hook(Accept));
        hooks.helo.get_or_insert_with(|| boxed_hook(Accept));
        hooks.mail.get_or_insert_with(|| boxed_hook(Accept));
        hooks.rcpt.get_or_insert_with(|| boxed_hook(Accept));
        flags.connect = true;
        flags.helo = true;
        flags.mail = true;
        flags.rcpt = true;
        self.0.iter().rev().fold(hooks, |hooks, wrap| wrap(hooks))
    }
}

fn wrap<L: HookLayer>(layer: &L, hooks: Hooks) -> Hooks {
    Hooks {
        connect: hooks
            .connect
            .map(|h| boxed_hook(<L as Layer<HookService<Connect>>>::layer(layer, h))),
        helo: hooks
            .helo
            .map(|h| boxed_hook(<L as Layer<HookService<Helo>>>::layer(layer, h))),
        mail: hooks
            .mail
            .map(|h| boxed_hook(<L as Layer<HookService<MailFrom>>>::layer(layer, h))),
        rcpt: hooks
            .rcpt
            .map(|h| boxed_hook(<L as Layer<HookService<RcptTo>>>::layer(layer, h))),
        auth: hooks
            .auth
            .map(|h| boxed_authenticator(<L as Layer<AuthenticatorService>>::layer(layer, h))),
    }
}
