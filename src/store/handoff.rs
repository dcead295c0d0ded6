//! Handing work from one of the store's threads to another, waking the receiver only when it
//! has to act.
//!
//! Writes reach the journal thread, and journal records the folder, through a [`Handoff`]. A
//! channel wakes its receiver for every message; here most messages have nowhere to be soon —
//! a log line is journaled with the next answered write, a record is folded with the next
//! batch — and on these machines every wake-up is a futex call and a context switch on each
//! side, several per task. So an item is either *urgent* (someone waits for it: wake the
//! receiver now) or may wait up to the handoff's delay; the receiver also acts when asked to
//! (`urge`), when enough items have gathered, and when the handoff closes.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Handoff<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
    /// How long an item that is not urgent may wait.
    delay: Duration,
    /// This many waiting items are due at once.
    enough: usize,
}

struct State<T> {
    items: Vec<T>,
    /// When the oldest waiting item arrived.
    since: Option<Instant>,
    urgent: bool,
    closed: bool,
    waiting: Waiting,
}

/// How the receiver waits, which decides whether a new item must wake it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Waiting {
    /// Not waiting: it looks again before it waits.
    No,
    /// Nothing to do: any item wakes it (to start counting the delay).
    Idle,
    /// Items are waiting for their delay: only what makes them due wakes it.
    Timed,
    /// Holding until a set time (the folder after a failed fold): only closing wakes it.
    Held,
}

/// What the receiver takes.
pub struct Taken<T> {
    pub items: Vec<T>,
    /// Nothing more will come: after these items, the receiver is done.
    pub closed: bool,
}

impl<T> Handoff<T> {
    pub fn new(delay: Duration, enough: usize) -> Handoff<T> {
        Handoff {
            state: Mutex::new(State {
                items: Vec::new(),
                since: None,
                urgent: false,
                closed: false,
                waiting: Waiting::No,
            }),
            cv: Condvar::new(),
            delay,
            enough: enough.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every change under this lock is a push or a take of whole items.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `items` over; `urgent` when someone waits for them. False once closed (nothing is
    /// taken).
    pub fn push(&self, items: impl IntoIterator<Item = T>, urgent: bool) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        let before = st.items.len();
        st.items.extend(items);
        if st.items.len() == before && !urgent {
            return true;
        }
        if st.since.is_none() {
            st.since = Some(Instant::now());
        }
        st.urgent |= urgent;
        let wake = match st.waiting {
            Waiting::No | Waiting::Held => false,
            Waiting::Idle => true,
            Waiting::Timed => st.urgent || st.items.len() >= self.enough,
        };
        if wake {
            st.waiting = Waiting::No;
            self.cv.notify_one();
        }
        true
    }

    /// Asks the receiver to act now on whatever is waiting.
    pub fn urge(&self) {
        let mut st = self.lock();
        st.urgent = true;
        if matches!(st.waiting, Waiting::Idle | Waiting::Timed) {
            st.waiting = Waiting::No;
            self.cv.notify_one();
        }
    }

    /// No more items: the receiver takes what is left and is done.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.waiting = Waiting::No;
        self.cv.notify_one();
    }

    /// Waits until items are due, then takes at most `limit` of them, oldest first. With
    /// `hold_until`, waits until then (or the close) whatever arrives.
    pub fn take(&self, limit: usize, hold_until: Option<Instant>) -> Taken<T> {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let until = match hold_until {
                Some(at) => (!st.closed && now < at).then_some((at, Waiting::Held)),
                None if st.closed || st.urgent || st.items.len() >= self.enough => None,
                None => match st.since {
                    Some(s) if now < s + self.delay => Some((s + self.delay, Waiting::Timed)),
                    Some(_) => None,
                    None => {
                        st.waiting = Waiting::Idle;
                        st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                },
            };
            let Some((at, how)) = until else { break };
            st.waiting = how;
            st = self
                .cv
                .wait_timeout(st, at.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.waiting = Waiting::No;
        let n = st.items.len().min(limit.max(1));
        let items: Vec<T> = st.items.drain(..n).collect();
        if st.items.is_empty() {
            st.since = None;
            st.urgent = false;
        } else {
            // What is left over the limit is due at once: it has waited already.
            st.urgent = true;
        }
        Taken {
            items,
            closed: st.closed && st.items.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LONG: Duration = Duration::from_secs(30);

    fn taken_after<T: Send + 'static>(
        h: &Arc<Handoff<T>>,
        limit: usize,
        hold: Option<Instant>,
    ) -> std::thread::JoinHandle<(Vec<T>, bool, Duration)> {
        let h = h.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let taken = h.take(limit, hold);
            (taken.items, taken.closed, t.elapsed())
        })
    }

    #[test]
    fn an_urgent_item_is_taken_at_once_with_everything_before_it() {
        let h = Arc::new(Handoff::new(LONG, 100));
        assert!(h.push([1, 2], false));
        let r = taken_after(&h, usize::MAX, None);
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.push([3], true));
        let (items, closed, took) = r.join().unwrap();
        assert_eq!(items, vec![1, 2, 3]);
        assert!(!closed);
        assert!(took < LONG / 2);
    }

    #[test]
    fn items_that_are_not_urgent_wait_for_the_delay() {
        let h = Arc::new(Handoff::new(Duration::from_millis(100), 100));
        let r = taken_after(&h, usize::MAX, None);
        std::thread::sleep(Duration::from_millis(20));
        let pushed = Instant::now();
        assert!(h.push([7], false));
        let (items, _, _) = r.join().unwrap();
        assert_eq!(items, vec![7]);
        assert!(pushed.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn enough_items_or_an_urge_make_them_due() {
        let h = Arc::new(Handoff::new(LONG, 3));
        let r = taken_after(&h, usize::MAX, None);
        for i in 0..3 {
            h.push([i], false);
        }
        assert_eq!(r.join().unwrap().0, vec![0, 1, 2]);
        h.push([9], false);
        let r = taken_after(&h, usize::MAX, None);
        std::thread::sleep(Duration::from_millis(20));
        h.urge();
        assert_eq!(r.join().unwrap().0, vec![9]);
    }

    #[test]
    fn a_limit_leaves_the_rest_due_at_once() {
        let h: Handoff<i32> = Handoff::new(LONG, 100);
        h.push(0..5, true);
        assert_eq!(h.take(2, None).items, vec![0, 1]);
        assert_eq!(h.take(2, None).items, vec![2, 3]);
        assert_eq!(h.take(2, None).items, vec![4]);
    }

    #[test]
    fn a_hold_ignores_urgency_until_its_time() {
        let h = Arc::new(Handoff::new(LONG, 1));
        let until = Instant::now() + Duration::from_millis(100);
        let r = taken_after(&h, usize::MAX, Some(until));
        h.push([1], true);
        h.urge();
        let (items, _, _) = r.join().unwrap();
        assert_eq!(items, vec![1]);
        assert!(Instant::now() >= until);
    }

    #[test]
    fn closing_hands_over_what_is_left_then_says_done() {
        let h = Arc::new(Handoff::new(LONG, 100));
        h.push([1, 2, 3], false);
        let r = taken_after(&h, 2, None);
        std::thread::sleep(Duration::from_millis(20));
        h.close();
        let (items, closed, _) = r.join().unwrap();
        assert_eq!((items, closed), (vec![1, 2], false));
        assert!(!h.push([4], true), "nothing is taken once closed");
        let last = h.take(2, None);
        assert_eq!((last.items, last.closed), (vec![3], true));
        // A hold ends at the close too.
        let t = h.take(2, Some(Instant::now() + LONG));
        assert!(t.items.is_empty() && t.closed);
    }
}
