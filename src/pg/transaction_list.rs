//! Values that belong to the current transaction and its savepoints: rate-limit admissions to
//! give back, credits to count in the analytics, spends to refund. Each `List` decides what
//! happens to its values when the transaction commits (or is prepared) and when it, or the
//! savepoint they were added under, rolls back; one pair of callbacks serves every list.
//!
//! The callbacks run during commit and abort, where nothing may raise: the lists' functions
//! must only touch backend memory and shared memory under locks they release themselves.

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

/// A list of values of the current transaction.
pub struct List<T: 'static> {
    items: RefCell<Vec<(pg_sys::SubTransactionId, T)>>,
    /// Called with the values of a transaction that commits or is prepared, oldest first.
    committed: fn(Vec<T>),
    /// Called with the values of a transaction or savepoint that rolls back, oldest first.
    rolled_back: fn(Vec<T>),
}

trait Ends {
    fn end(&self, commit: bool);
    fn end_savepoint(
        &self,
        sub: pg_sys::SubTransactionId,
        parent: Option<pg_sys::SubTransactionId>,
    );
}

thread_local! {
    static LISTS: RefCell<Vec<&'static dyn Ends>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

impl<T: 'static> List<T> {
    /// A list for this backend, for its whole life (declare it in a `thread_local!`).
    pub fn new(committed: fn(Vec<T>), rolled_back: fn(Vec<T>)) -> &'static List<T> {
        let list: &'static List<T> = Box::leak(Box::new(List {
            items: RefCell::new(Vec::new()),
            committed,
            rolled_back,
        }));
        LISTS.with(|l| l.borrow_mut().push(list));
        if !CALLBACKS.with(|c| c.replace(true)) {
            // SAFETY: registers plain callbacks for this backend's transaction events.
            unsafe {
                pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
                pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
            }
        }
        list
    }

    /// Adds a value under the current savepoint.
    pub fn push(&self, item: T) {
        // SAFETY: reads backend state.
        let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
        self.items.borrow_mut().push((sub, item));
    }

    pub fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.borrow().is_empty()
    }

    /// Takes out the newest value that `which` selects.
    pub fn take_newest(&self, which: impl Fn(&T) -> bool) -> Option<T> {
        let mut items = self.items.borrow_mut();
        let i = items.iter().rposition(|(_, x)| which(x))?;
        Some(items.remove(i).1)
    }

    /// The values added under `sub` or a savepoint inside it (subtransaction ids grow), taken
    /// out; all of them for None.
    fn take_from(&self, sub: Option<pg_sys::SubTransactionId>) -> Vec<T> {
        let mut items = self.items.borrow_mut();
        let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *items)
            .into_iter()
            .partition(|(s, _)| sub.is_none_or(|sub| *s >= sub));
        *items = kept;
        out.into_iter().map(|(_, x)| x).collect()
    }
}

impl<T: 'static> Ends for List<T> {
    fn end(&self, commit: bool) {
        let items = self.take_from(None);
        if !items.is_empty() {
            (if commit {
                self.committed
            } else {
                self.rolled_back
            })(items);
        }
    }

    /// `ROLLBACK TO SAVEPOINT` (parent None) hands the savepoint's values to `rolled_back`;
    /// `RELEASE` hands them to the enclosing level.
    fn end_savepoint(
        &self,
        sub: pg_sys::SubTransactionId,
        parent: Option<pg_sys::SubTransactionId>,
    ) {
        match parent {
            None => {
                let items = self.take_from(Some(sub));
                if !items.is_empty() {
                    (self.rolled_back)(items);
                }
            }
            Some(parent) => {
                for (s, _) in self
                    .items
                    .borrow_mut()
                    .iter_mut()
                    .filter(|(s, _)| *s == sub)
                {
                    *s = parent;
                }
            }
        }
    }
}

fn each(f: impl Fn(&dyn Ends)) {
    let lists: Vec<&'static dyn Ends> = LISTS.with(|l| l.borrow().clone());
    for list in lists {
        f(list);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            each(|l| l.end(true))
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => each(|l| l.end(false)),
        _ => {}
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => each(|l| l.end_savepoint(sub, None)),
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            each(|l| l.end_savepoint(sub, Some(parent)))
        }
        _ => {}
    }
}
