//! "Now", behind a handle the tests can drive, so that TTLs and idle times
//! are tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, from the system or from a test.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `ms` until [`Clock::advance`] moves it.
    pub fn manual(ms: i64) -> Clock {
        Clock { manual: Some(Arc::new(AtomicI64::new(ms))) }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        }
    }

    /// Moves a manual clock forward; a system clock ignores it.
    pub fn advance(&self, d: std::time::Duration) {
        if let Some(t) = &self.manual {
            t.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
        }
    }
}
