//! Test files gathered into one test binary (`tests/it/main.rs`) no longer
//! run one after another as their binaries did: [`Gate`] restores that where
//! it matters. Tests of one group (a former file) may overlap each other, as
//! they always could; tests of different groups never overlap.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// The group whose tests run now, and how many of them.
type Running = Option<(&'static str, usize)>;

/// One per test binary, in a `static`.
#[derive(Debug, Default)]
pub struct Gate {
    running: Mutex<Running>,
    freed: Condvar,
}

/// A test of `group` counted in; dropping it (the test's end, also by a
/// panic) counts it out.
#[derive(Debug)]
#[must_use = "the test is let in only while this guard lives"]
pub struct Entered<'a> {
    gate: &'a Gate,
}

impl Gate {
    pub const fn new() -> Gate {
        Gate {
            running: Mutex::new(None),
            freed: Condvar::new(),
        }
    }

    /// Waits until no test of another group runs, then lets this one in.
    /// Blocks the thread: call it first in a test, before the test starts
    /// any task (in an async test, before its first await).
    pub fn enter(&self, group: &'static str) -> Entered<'_> {
        let mut running = self.lock();
        loop {
            match running.as_mut() {
                None => {
                    *running = Some((group, 1));
                    break;
                }
                Some((current, count)) if *current == group => {
                    *count += 1;
                    break;
                }
                Some(_) => {
                    running = self
                        .freed
                        .wait(running)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        Entered { gate: self }
    }

    fn lock(&self) -> MutexGuard<'_, Running> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // a consistent count.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut running = self.gate.lock();
        if let Some((_, count)) = running.as_mut() {
            *count -= 1;
            if *count == 0 {
                *running = None;
                self.gate.freed.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_group_overlaps_itself_and_waits_for_another() {
        static GATE: Gate = Gate::new();
        let first = GATE.enter("a");
        // Another test of the same group is let in at once.
        let second = GATE.enter("a");
        let entered = Arc::new(AtomicBool::new(false));
        let other = {
            let entered = Arc::clone(&entered);
            std::thread::spawn(move || {
                let _b = GATE.enter("b");
                entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "b ran beside a");
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "b ran beside the last a");
        drop(second);
        other.join().expect("b's thread");
        assert!(entered.load(Ordering::SeqCst), "b was let in once a ended");
        // And the gate is free again for a.
        drop(GATE.enter("a"));
    }
}
