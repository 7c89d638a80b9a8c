//! PostgreSQL snapshots, and what a deployment knows it has delivered.
//!
//! Sequence order is not commit order: a transaction that began first (and
//! holds the lower xid and maybe the lower sequence numbers) can commit
//! last. A snapshot says which transactions had committed when it was
//! taken: every xid below `xmin` had ended, the xids in `xip` were still
//! running, and none at or above `xmax` had started. So once every entry
//! visible in snapshot S and above position P has been delivered, what is
//! left to deliver later is exactly the entries above P whose transaction
//! was in S's `xip` or at or above its `xmax` ([`Seen::pending_filter`]).
//! Entries of transactions that commit while another runs for hours are
//! thus delivered at once; only the position waits for the oldest running
//! transaction (`xmin`), because below it nothing can appear any more.

use std::fmt;

/// A snapshot as `pg_current_snapshot()::text` prints it: `xmin:xmax:xip,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Every transaction below it had ended.
    pub xmin: i64,
    /// No transaction at or above it had started.
    pub xmax: i64,
    /// Transactions between the two that were still running.
    pub xip: Vec<i64>,
}

/// A snapshot text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadSnapshot(pub String);

impl fmt::Display for BadSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a snapshot that does not parse: {:?}", self.0)
    }
}

impl std::str::FromStr for Snapshot {
    type Err = BadSnapshot;

    fn from_str(s: &str) -> Result<Self, BadSnapshot> {
        let bad = || BadSnapshot(s.to_string());
        let mut parts = s.splitn(3, ':');
        let mut number = || parts.next().ok_or_else(bad)?.parse::<i64>().map_err(|_| bad());
        let (xmin, xmax) = (number()?, number()?);
        let xip = match s.splitn(3, ':').nth(2) {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse::<i64>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        if xmin > xmax || xip.iter().any(|x| *x < xmin || *x >= xmax) {
            return Err(bad());
        }
        Ok(Snapshot { xmin, xmax, xip })
    }
}

/// What a deployment has delivered above its position: every entry
/// visible in this snapshot. `None` in the database: nothing is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The snapshot's `xmax` (0: nothing seen, every entry is pending).
    pub xmax: i64,
    /// The snapshot's running transactions.
    pub xip: Vec<i64>,
}

impl Seen {
    /// From the position row's `seen_xmax` and `seen_xip` columns.
    pub fn from_columns(xmax: Option<i64>, xip: Option<Vec<i64>>) -> Seen {
        match xmax {
            Some(xmax) => Seen {
                xmax,
                xip: xip.unwrap_or_default(),
            },
            None => Seen::default(),
        }
    }

    /// The entries still to deliver are those above the position with
    /// `xid >= .0` or `xid` in `.1`.
    pub fn pending_filter(&self) -> (i64, &[i64]) {
        (self.xmax, &self.xip)
    }

    /// Whether an entry of transaction `xid` may still be undelivered.
    #[cfg(test)]
    pub fn pending(&self, xid: i64) -> bool {
        xid >= self.xmax || self.xip.contains(&xid)
    }
}

impl From<&Snapshot> for Seen {
    fn from(s: &Snapshot) -> Seen {
        Seen {
            xmax: s.xmax,
            xip: s.xip.clone(),
        }
    }
}

/// A position in the log: `(xid, seq)`; every entry at or below it has
/// been delivered.
pub(crate) type Position = (i64, i64);

/// Where the position may move once every entry visible in `snapshot` and
/// above the old position is delivered: past every transaction below its
/// `xmin` (they have all ended), never past one still running.
pub(crate) fn settled(snapshot: &Snapshot) -> Position {
    (snapshot.xmin, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse() {
        let s: Snapshot = "729:735:729,731".parse().unwrap();
        assert_eq!(
            s,
            Snapshot {
                xmin: 729,
                xmax: 735,
                xip: vec![729, 731]
            }
        );
        assert_eq!("10:10:".parse::<Snapshot>().unwrap().xip, Vec::<i64>::new());
        for bad in ["", "1", "a:b:", "5:4:", "1:9:12", "1:9:x"] {
            assert!(bad.parse::<Snapshot>().is_err(), "{bad}");
        }
    }

    #[test]
    fn what_a_snapshot_did_not_see_stays_pending() {
        let s: Snapshot = "100:110:100,104".parse().unwrap();
        let seen = Seen::from(&s);
        // Committed before the snapshot: delivered.
        assert!(!seen.pending(99) && !seen.pending(103) && !seen.pending(109));
        // Running at the snapshot, or not yet started: may commit later.
        assert!(seen.pending(100) && seen.pending(104) && seen.pending(110) && seen.pending(5_000));
        // The position never passes a transaction still running.
        assert_eq!(settled(&s), (100, 0));
        assert!(Seen::default().pending(1), "nothing seen: everything pending");
    }
}
