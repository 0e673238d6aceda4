//! Locking that survives a panic elsewhere.

/// Locks a mutex, going on with the data if another thread panicked while holding it (every
/// critical section in the broker leaves its data consistent).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
