//! The fake network, after tikv/raft-rs `harness/src/network.rs`: links can be cut
//! (both ways or one way), a node isolated, every message dropped with a probability,
//! and everything recovered. Each message that gets through takes a random one-way
//! delay, so messages are reordered as on a real network.

use std::collections::BTreeSet;

use crate::rng::Rng;
use crate::Us;

pub struct Network {
    /// Cut links, `(from, to)`.
    cut: BTreeSet<(u64, u64)>,
    /// Probability that any one message is lost.
    drop: f64,
    /// One-way delay, uniform in `delay.0..=delay.1` µs.
    pub delay: (Us, Us),
}

impl Network {
    pub fn new(delay: (Us, Us)) -> Network {
        Network {
            cut: BTreeSet::new(),
            drop: 0.0,
            delay,
        }
    }

    /// Cut the link between `a` and `b`, both ways.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cut only what `from` sends to `to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Cut `id` off from every other node in `all`.
    pub fn isolate(&mut self, id: u64, all: &[u64]) {
        for &other in all {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Every link back (the drop probability stays).
    pub fn recover(&mut self) {
        self.cut.clear();
    }

    pub fn set_drop(&mut self, p: f64) {
        self.drop = p;
    }

    /// The delay of one message from `from` to `to`, or None if it is lost.
    pub fn transit(&self, from: u64, to: u64, rng: &mut Rng) -> Option<Us> {
        if self.cut.contains(&(from, to)) || rng.chance(self.drop) {
            return None;
        }
        Some(rng.range(self.delay.0, self.delay.1))
    }
}
