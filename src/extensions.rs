//! Typed extensions: where layers leave their results (SPF, DKIM, DMARC,
//! rate-limit state, ...) for the layers and handler after them.
//!
//! The message [`Context`](crate::Context) owns an [`http::Extensions`] map.
//! Stage requests share a map per transaction ([`SharedExtensions`]), so a
//! result put there at `MAIL FROM` (say, SPF) is on the message's context.

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
