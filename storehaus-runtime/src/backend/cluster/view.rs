//! One node's view of a cluster: its `CLUSTER SLOTS` reply, parsed, and
//! what the topology compares between views (which slots have a primary,
//! which nodes own them).

use super::topology::Node;

/// One node's `CLUSTER SLOTS`: slot ranges, each with its primary and
/// replicas, sorted by the first slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    ranges: Vec<SlotRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    primary: Node,
    replicas: Vec<Node>,
}

impl View {
    /// Parses a `CLUSTER SLOTS` reply given by a node on `host` (a node
    /// named with an empty host is on the answering node's host).
    pub fn parse(reply: redis::Value, host: &str) -> Option<View> {
        let redis::Value::Array(items) = reply else { return None };
        let mut ranges = Vec::new();
        for item in items {
            let redis::Value::Array(parts) = item else { continue };
            let mut parts = parts.into_iter();
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) = (parts.next(), parts.next()) else {
                continue;
            };
            let mut nodes = parts.filter_map(|n| node(n, host));
            let Some(primary) = nodes.next() else { continue };
            let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
                continue;
            };
            ranges.push(SlotRange {
                start,
                end,
                primary,
                replicas: nodes.collect(),
            });
        }
        ranges.sort_by_key(|r| r.start);
        Some(View { ranges })
    }

    /// Whether every slot 0..=16383 has a primary.
    pub fn covers_all(&self) -> bool {
        let mut next = 0u32;
        for r in &self.ranges {
            if u32::from(r.start) > next {
                return false;
            }
            next = next.max(u32::from(r.end) + 1);
        }
        next == 16_384
    }

    /// The primaries, sorted, each once.
    pub fn primaries(&self) -> Vec<Node> {
        let mut out: Vec<Node> = self.ranges.iter().map(|r| r.primary.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every node, primaries and replicas, sorted, each once.
    pub fn nodes(&self) -> Vec<Node> {
        let mut out: Vec<Node> = self
            .ranges
            .iter()
            .flat_map(|r| std::iter::once(&r.primary).chain(&r.replicas))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether both views give every slot to the same primary.
    pub fn same_owners(&self, other: &View) -> bool {
        self.ranges.len() == other.ranges.len()
            && self
                .ranges
                .iter()
                .zip(&other.ranges)
                .all(|(a, b)| (a.start, a.end, &a.primary) == (b.start, b.end, &b.primary))
    }
}

/// `[host, port, ...]` of a `CLUSTER SLOTS` range.
fn node(value: redis::Value, answering_host: &str) -> Option<Node> {
    let redis::Value::Array(fields) = value else {
        return None;
    };
    let mut fields = fields.into_iter();
    let host = match fields.next()? {
        redis::Value::BulkString(h) => String::from_utf8_lossy(&h).into_owned(),
        redis::Value::SimpleString(h) => h,
        redis::Value::Nil => String::new(),
        _ => return None,
    };
    let host = match host.as_str() {
        "?" => return None,
        "" => answering_host.to_string(),
        _ => host,
    };
    let redis::Value::Int(port) = fields.next()? else {
        return None;
    };
    Some((host, u16::try_from(port).ok()?))
}
