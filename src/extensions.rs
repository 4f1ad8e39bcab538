//! Typed extensions: where layers leave their results (SPF, DKIM, DMARC,
//! rate-limit state, ...) for the layers and handler after them.
//!
//! The message [`Context`](crate::Context) owns an [`http::Extensions`] map.
//! Stage requests share a map per transaction ([`SharedExtensions`]), so a
//! result put there at `MAIL FROM` (say, SPF) is on the message's context.
//!
//! # One API for layers, one for handlers
//!
//! - In a layer generic over stages, use the [`Stage`](crate::Stage)
//!   methods: `req.insert_extension(v)` and `req.extension::<T>()`. They
//!   work on every request, the [`Context`](crate::Context) included, and
//!   return a *copy* of the value (hence `T: Clone`): the hook requests of a
//!   transaction share one map behind a lock, and a reference could not
//!   outlive the lock. Keep large values in an `Arc`.
//! - In a message handler, `ctx.extensions().get::<T>()` borrows from the
//!   map the context owns outright (no lock, no copy), and
//!   `ctx.extensions_mut()` is the whole `http::Extensions` API. The
//!   `Stage` methods work there too; both read the same map.
//!
//! ```
//! use smtpsrv::{Context, Envelope, SessionInfo, Stage};
//! #[derive(Clone, Debug, PartialEq)]
//! struct Score(u32);
//! # let session = std::sync::Arc::new(SessionInfo::new(
//! #     "192.0.2.1:5000".parse().unwrap(), "127.0.0.1:25".parse().unwrap()));
//! let mut ctx = Context::new(session, Envelope::default(), "Subject: x\r\n\r\n".into());
//! ctx.insert_extension(Score(3));                      // as a layer would
//! assert_eq!(ctx.extension::<Score>(), Some(Score(3))); // a copy
//! assert_eq!(ctx.extensions().get::<Score>(), Some(&Score(3))); // a borrow
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

pub use http::Extensions;

/// A type map shared by the stage requests of one transaction (or session).
#[derive(Debug, Clone, Default)]
pub struct SharedExtensions(Arc<Mutex<Extensions>>);

impl SharedExtensions {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Extensions> {
        // A panic while holding the lock cannot leave the map half-written
        // in a way that matters to readers: recover the guard.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a value, returning the previous one of that type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.lock().insert(value)
    }

    /// A copy of the value of type `T`, if present.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.lock().get::<T>().cloned()
    }

    /// A copy of the whole map.
    pub fn snapshot(&self) -> Extensions {
        self.lock().clone()
    }
}

impl From<Extensions> for SharedExtensions {
    /// A shared map starting with a copy of `map`'s values.
    fn from(map: Extensions) -> Self {
        SharedExtensions(Arc::new(Mutex::new(map)))
    }
}
