//! [`Subscriptions`]: one connection's rooms as its shard sees them, and the CONNECT barrier.
//!
//! A connection subscribes to a room by asking the room's owner (a `Subscribe` between
//! shards); the owner counts it and answers. Until the answer the subscription is *pending*;
//! after it, *active*: deliveries to the room reach the connection. The client's CONNECT is
//! answered only once every subscription made for it (one per group of the user) has been
//! answered, so that a message sent after a client saw its CONNECT answer reaches it: that is
//! the barrier. Sans-IO: the caller sends the `Subscribe`s and `Unsubscribe`s these answers call
//! for, keeps the shard's local room lists, and answers the CONNECT.

/// Why a connection subscribes to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// At connect, for each group the user belongs to (held by the barrier).
    Connect,
    /// The client's `joinGroup`.
    Join,
    /// The user was added to the group while connected: active at once, so that the admin
    /// call that added the member returns only once deliveries reach it.
    Enroll,
}

/// A connection's membership in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Subscribe sent to the room's owner, no answer yet.
    Pending,
    /// In the room: deliveries reach it.
    Active,
}

/// What an owner's answer to a `Subscribe` asks of the caller.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Put the connection in the shard's local room list (it became active).
    pub add_local: bool,
    /// Take it out of the local room list (the subscription was refused).
    pub remove_local: bool,
    /// Send the owner an `Unsubscribe`: the connection left while joining, and the owner
    /// counted it.
    pub give_back: bool,
    /// The CONNECT barrier was released by this answer: answer the client's CONNECT.
    pub connected: bool,
}

/// What leaving a room asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It was active: take it out of the local room list and send the owner an `Unsubscribe`.
    GiveBack,
    /// It was pending: nothing now; the owner's answer will say to give the count back.
    Forgotten,
    /// It was not in the room.
    NotIn,
}

/// One connection's rooms, and its CONNECT barrier.
#[derive(Debug)]
pub struct Subscriptions<G> {
    rooms: Vec<(G, State)>,
    /// CONNECT's subscriptions not answered yet, plus one while they are being sent; `None`
    /// when no CONNECT is waiting.
    connecting: Option<u32>,
}

impl<G> Default for Subscriptions<G> {
    fn default() -> Self {
        Subscriptions {
            rooms: Vec::new(),
            connecting: None,
        }
    }
}

impl<G: PartialEq + Clone> Subscriptions<G> {
    /// The CONNECT's subscriptions are about to be sent: the barrier holds until
    /// [`Subscriptions::connect_sent`] and every one's answer.
    pub fn begin_connect(&mut self) {
        self.connecting = Some(1);
    }

    /// Wants `group`'s room. False when the connection is already in it or joining (nothing
    /// to send); true when the caller sends the owner a `Subscribe`. A subscription for
    /// [`Reason::Enroll`] is active at once: the caller puts it in the local room list now.
    pub fn want(&mut self, group: &G, reason: Reason) -> bool {
        if self.state(group).is_some() {
            return false;
        }
        let state = match reason {
            Reason::Enroll => State::Active,
            Reason::Connect | Reason::Join => State::Pending,
        };
        self.rooms.push((group.clone(), state));
        if reason == Reason::Connect {
            if let Some(n) = &mut self.connecting {
                *n += 1;
            }
        }
        true
    }

    /// Every `Subscribe` of the CONNECT was sent. True when that released the barrier (it
    /// had none to wait for, or all were answered already).
    pub fn connect_sent(&mut self) -> bool {
        self.settle()
    }

    /// The owner answered the `Subscribe` of `group` made for `reason`: `ok`, or refused.
    pub fn answered(&mut self, group: &G, reason: Reason, ok: bool) -> Answered {
        let mut out = Answered::default();
        let at = self.rooms.iter().position(|(g, _)| g == group);
        match (ok, at) {
            (true, Some(i)) => {
                if self.rooms[i].1 == State::Pending {
                    self.rooms[i].1 = State::Active;
                    out.add_local = true;
                }
            }
            (true, None) => out.give_back = true,
            (false, Some(i)) => {
                self.rooms.swap_remove(i);
                out.remove_local = true;
            }
            (false, None) => {}
        }
        if reason == Reason::Connect {
            out.connected = self.settle();
        }
        out
    }

    /// Leaves `group`'s room (the client's `leaveGroup`, an eviction, or a closing
    /// connection).
    pub fn leave(&mut self, group: &G) -> Left {
        match self.rooms.iter().position(|(g, _)| g == group) {
            None => Left::NotIn,
            Some(i) => match self.rooms.swap_remove(i).1 {
                State::Active => Left::GiveBack,
                State::Pending => Left::Forgotten,
            },
        }
    }

    /// Forgets everything (the client left the namespace; its rooms were given back).
    pub fn reset(&mut self) {
        self.rooms.clear();
        self.connecting = None;
    }

    pub fn state(&self, group: &G) -> Option<State> {
        self.rooms.iter().find(|(g, _)| g == group).map(|(_, s)| *s)
    }

    /// The rooms the connection is in or joining.
    pub fn groups(&self) -> impl Iterator<Item = &G> {
        self.rooms.iter().map(|(g, _)| g)
    }

    /// One CONNECT subscription (or the sending of them) done; true when it was the last.
    fn settle(&mut self) -> bool {
        match &mut self.connecting {
            Some(n) if *n <= 1 => {
                self.connecting = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs() -> Subscriptions<&'static str> {
        Subscriptions::default()
    }

    #[test]
    fn connect_waits_for_every_subscription_of_the_user() {
        let mut s = subs();
        s.begin_connect();
        assert!(s.want(&"a", Reason::Connect));
        assert!(s.want(&"b", Reason::Connect));
        assert!(!s.connect_sent(), "two answers outstanding");
        assert!(!s.answered(&"a", Reason::Connect, true).connected);
        let last = s.answered(&"b", Reason::Connect, false);
        assert!(
            last.connected,
            "released by the last answer, refused or not"
        );
        assert!(last.remove_local);
        assert_eq!(s.state(&"a"), Some(State::Active));
        assert_eq!(s.state(&"b"), None);
    }

    #[test]
    fn answers_before_everything_was_sent_do_not_release_the_barrier() {
        let mut s = subs();
        s.begin_connect();
        assert!(s.want(&"a", Reason::Connect));
        assert!(!s.answered(&"a", Reason::Connect, true).connected);
        assert!(s.connect_sent(), "released once the sending is done");
    }

    #[test]
    fn a_user_in_no_group_is_connected_at_once() {
        let mut s = subs();
        s.begin_connect();
        assert!(s.connect_sent());
        assert!(!s.connect_sent(), "released once");
    }

    #[test]
    fn a_group_already_in_or_joining_sends_nothing_and_holds_nothing() {
        let mut s = subs();
        assert!(s.want(&"a", Reason::Join));
        s.begin_connect();
        assert!(!s.want(&"a", Reason::Connect), "already joining");
        assert!(s.connect_sent(), "nothing to wait for");
        assert!(s.answered(&"a", Reason::Join, true).add_local);
        assert!(!s.want(&"a", Reason::Join), "already in");
    }

    #[test]
    fn a_connection_that_left_while_joining_gives_the_count_back() {
        let mut s = subs();
        assert!(s.want(&"a", Reason::Join));
        assert_eq!(s.leave(&"a"), Left::Forgotten);
        let a = s.answered(&"a", Reason::Join, true);
        assert!(a.give_back && !a.add_local);
        // Refused: there is nothing to give back.
        assert!(s.want(&"b", Reason::Join));
        assert_eq!(s.leave(&"b"), Left::Forgotten);
        assert_eq!(s.answered(&"b", Reason::Join, false), Answered::default());
    }

    #[test]
    fn an_active_room_is_given_back_on_leaving() {
        let mut s = subs();
        assert!(s.want(&"a", Reason::Join));
        s.answered(&"a", Reason::Join, true);
        assert_eq!(s.leave(&"a"), Left::GiveBack);
        assert_eq!(s.leave(&"a"), Left::NotIn);
    }

    #[test]
    fn an_enrolled_member_is_in_the_room_before_the_owner_answers() {
        let mut s = subs();
        assert!(s.want(&"a", Reason::Enroll));
        assert_eq!(s.state(&"a"), Some(State::Active));
        assert_eq!(s.answered(&"a", Reason::Enroll, true), Answered::default());
        assert_eq!(s.leave(&"a"), Left::GiveBack);
    }

    #[test]
    fn reset_forgets_rooms_and_a_waiting_connect() {
        let mut s = subs();
        s.begin_connect();
        s.want(&"a", Reason::Connect);
        s.reset();
        assert_eq!(s.groups().count(), 0);
        assert!(
            !s.answered(&"a", Reason::Connect, true).connected,
            "a late answer connects nothing"
        );
    }
}
