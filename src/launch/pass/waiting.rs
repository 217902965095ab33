//! The clients sent on one connection to a receiving daemon that the
//! daemon has not taken yet, each holding its session's place until it is
//! taken: so that `max_instances_per_source` and the shares of `[tcpmux]`
//! bound what one source holds of the daemon's queue.
//!
//! The kernel does not say how many messages a peer has not received, but
//! it does say how many bytes of buffer they hold on the sending side
//! (`SIOCOUTQ`): each message keeps its buffer charged to the sender until
//! it is received. The daemon receives in order, so with each message's
//! buffer size known, what the queue holds now tells how many of the
//! oldest were taken.
//!
//! A message's size is what the queue grew by when it was sent. The
//! daemon may take older messages between the two looks, which only makes
//! that smaller; a message's buffer depends on its length alone, so the
//! largest size seen for a length is its size.

use std::collections::{HashMap, VecDeque};

/// Clients waiting in one connection's queue, oldest first, each with the
/// bytes its message holds there. `P` is what each holds (its session's
/// place); dropping it gives the place back.
#[derive(Debug)]
pub struct Waiting<P> {
    clients: VecDeque<(P, usize)>,
    /// The sum of their sizes.
    bytes: usize,
    /// The largest size seen for each message length (at most
    /// `MAX_PASS_MESSAGE` + 1 entries).
    sizes: HashMap<usize, usize>,
}

impl<P> Default for Waiting<P> {
    fn default() -> Self {
        Waiting {
            clients: VecDeque::new(),
            bytes: 0,
            sizes: HashMap::new(),
        }
    }
}

impl<P> Waiting<P> {
    /// A client whose message of `length` bytes was just sent: the queue
    /// held `before` bytes just before the send and `after` just after.
    ///
    /// Only the daemon's receives can run between the two looks, and
    /// they only lower `after`: the size is never taken too large, so a
    /// client's place is never given back before its message was taken.
    /// (A size taken too small, before one of its length was seen whole,
    /// holds the places of older clients until this one is taken, which
    /// errs on the side of the limits.)
    pub fn push(&mut self, place: P, length: usize, before: usize, after: usize) {
        let seen = after.saturating_sub(before).max(1);
        let known = self.sizes.entry(length).or_insert(seen);
        *known = (*known).max(seen);
        let size = *known;
        self.clients.push_back((place, size));
        self.bytes += size;
    }

    /// The queue holds `queued` bytes now: the clients whose messages were
    /// taken are let go (their places given back), oldest first.
    pub fn settle(&mut self, queued: usize) {
        if queued == 0 {
            self.clear();
            return;
        }
        let mut taken = self.bytes.saturating_sub(queued);
        while let Some(&(_, size)) = self.clients.front() {
            if size > taken {
                break;
            }
            taken -= size;
            self.bytes -= size;
            self.clients.pop_front();
        }
    }

    /// Lets every client go: the connection is gone, and with it what its
    /// queue held.
    pub fn clear(&mut self) {
        self.clients.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(w: &Waiting<&'static str>) -> Vec<&'static str> {
        w.clients.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn the_oldest_go_as_the_queue_shrinks() {
        let mut w = Waiting::default();
        w.push("a", 100, 0, 768);
        w.push("b", 100, 768, 1536);
        w.push("c", 300, 1536, 2816);
        w.settle(2816);
        assert_eq!(names(&w), ["a", "b", "c"]);
        w.settle(2048);
        assert_eq!(names(&w), ["b", "c"], "a taken");
        w.settle(1280);
        assert_eq!(names(&w), ["c"], "b taken");
        w.push("d", 100, 1280, 2048);
        w.settle(768);
        assert_eq!(names(&w), ["d"], "c taken");
        w.settle(0);
        assert!(w.is_empty());
    }

    #[test]
    fn a_receive_between_the_looks_never_lets_a_client_go_early() {
        let mut w = Waiting::default();
        w.push("a", 100, 0, 768);
        // a is taken between the two looks around b's send, b's length
        // not seen before: b is sized 0 + 1 instead of 768.
        w.push("b", 200, 768, 768);
        // b still queued: neither goes (a held for longer, as is safe).
        w.settle(768);
        assert_eq!(names(&w), ["a", "b"]);
        w.push("c", 200, 768, 1536);
        w.settle(1536);
        assert_eq!(names(&w), ["a", "b", "c"]);
        // b taken: a and b go, c stays.
        w.settle(768);
        assert_eq!(names(&w), ["c"]);
        // A receive larger than the new message: sized 1.
        w.push("d", 50, 768, 500);
        w.settle(500);
        assert_eq!(names(&w), ["c", "d"], "d still queued");
        w.settle(0);
        assert!(w.is_empty());
    }

    #[test]
    fn a_length_seen_whole_once_is_sized_whole_after_a_receive_between() {
        let mut w = Waiting::default();
        w.push("a", 100, 0, 768);
        w.push("b", 100, 768, 1536);
        // Two taken between the looks around c's send, of a length seen
        // before: c is still sized 768.
        w.push("c", 100, 1536, 768);
        w.settle(768);
        assert_eq!(names(&w), ["c"], "a and b taken");
    }

    #[test]
    fn places_are_given_back_as_clients_go() {
        use std::rc::Rc;
        let place = Rc::new(());
        let mut w = Waiting::default();
        w.push(Rc::clone(&place), 10, 0, 100);
        w.push(Rc::clone(&place), 10, 100, 200);
        assert_eq!(Rc::strong_count(&place), 3);
        w.settle(100);
        assert_eq!(Rc::strong_count(&place), 2);
        w.clear();
        assert_eq!(Rc::strong_count(&place), 1);
    }
}
