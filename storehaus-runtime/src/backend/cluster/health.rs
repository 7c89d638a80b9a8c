//! When a cluster connection stops answering: a command abandoned by its
//! caller (its budget ran out) moves the contact epoch (a node that does not
//! answer may be replaced by a replica) and has the slot map checked
//! (`topology`); a run of failures while every primary answers the
//! topology's own questions has the connection replaced by a new one
//! instead of waiting on a stuck one forever (as the single-node pool drops
//! a silent connection).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use std::sync::Arc;

use super::topology::Topology;
use crate::backend::contact::Contact;

/// Moves the contact epoch if the command it watches is abandoned before
/// its answer (the caller's budget ran out): a node that does not answer
/// may be replaced by a replica, so the slot map is checked too. Counts it
/// as a failure of the connection.
pub(super) struct Watched<'a> {
    pub contact: &'a Contact,
    pub health: &'a Health,
    pub topology: &'a Arc<Topology>,
    pub done: bool,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.contact.bump("a cluster command went unanswered");
            self.topology.suspect("a cluster command went unanswered");
            self.health.failed();
        }
    }
}

/// Failures since the last answer, so that a cluster connection that keeps
/// failing is replaced by a new one (which learns the slot map afresh from
/// the seeds) instead of being waited on forever.
#[derive(Debug, Default)]
pub(super) struct Health {
    failures: AtomicU32,
    /// Set when the connection must be replaced before the next command.
    pub replace: AtomicBool,
}

impl Health {
    pub fn answered(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= REPLACE_AFTER_FAILURES {
            self.failures.store(0, Ordering::Relaxed);
            self.replace.store(true, Ordering::Release);
        }
    }
}

/// Consecutive failures (errors or unanswered commands) after which the
/// cluster connection is replaced.
const REPLACE_AFTER_FAILURES: u32 = 8;
