//! Who keeps a connection slot when slots run short, so idle or unauthenticated sockets cannot
//! starve the clients that authenticate (issue 22):
//!
//! - one client address holds at most `server.max_connections_per_ip` connections; past it a new
//!   one is closed at once;
//! - once fewer than the reserve (`server.reserved_connections`) of `max_connections` are free
//!   ("pressure"), each newly accepted connection closes ("sheds") the oldest open connection
//!   that has not *proven* itself — no request of it authenticated — and a connection accepted
//!   under pressure must start its first request within `header_read_timeout_secs`.
//!
//! A connection is proven when a request on it passes authentication (`app::http::auth` sets its
//! [`Standing`]); proven connections are never shed, only timed out as before.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::app::http::guard::Standing;

/// The open connections as admission sees them.
#[derive(Debug, Default)]
struct Table {
    /// The next connection's number (accept order).
    next: u64,
    /// Connections open now.
    open: usize,
    /// Open connections per client address (addresses with none are removed).
    per_ip: HashMap<IpAddr, usize>,
    /// Open connections not known to be proven, oldest first (proven ones are dropped lazily).
    unproven: BTreeMap<u64, Arc<Standing>>,
}

/// The admission rules of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    /// The table.
    table: Mutex<Table>,
    /// `server.max_connections_per_ip`.
    per_ip_max: usize,
    /// Open connections from which on a new one sheds the oldest unproven one
    /// (`max_connections - reserve`).
    pressure_from: usize,
}

/// A connection let in: its standing, whether it came under pressure, and its place in the
/// table (given back when dropped).
pub(crate) struct Admitted {
    /// What its requests and the table share.
    pub standing: Arc<Standing>,
    /// It arrived with fewer than the reserve of slots free.
    pub under_pressure: bool,
    /// Its place.
    _ticket: Ticket,
}

/// A connection's place in the table; dropping it frees the place.
struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.admission.table();
        table.open = table.open.saturating_sub(1);
        table.unproven.remove(&self.id);
        if let Some(count) = table.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// The rules for a listener of `max_connections` keeping `reserve` of them and letting one
    /// address hold `per_ip_max`.
    pub(crate) fn new(max_connections: usize, reserve: usize, per_ip_max: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            per_ip_max,
            pressure_from: max_connections.saturating_sub(reserve),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Plain counters and maps, consistent after any panic while held.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a connection from `ip` in, or `None` when its address holds its share already.
    /// Under pressure, sheds the oldest unproven connection first.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut table = self.table();
        let held = table.per_ip.entry(ip).or_insert(0);
        if *held >= self.per_ip_max {
            return None;
        }
        *held += 1;
        table.open += 1;
        let under_pressure = table.open > self.pressure_from;
        if under_pressure {
            shed_oldest_unproven(&mut table);
        }
        let id = table.next;
        table.next += 1;
        let standing = Arc::new(Standing::default());
        table.unproven.insert(id, Arc::clone(&standing));
        drop(table);
        Some(Admitted {
            standing,
            under_pressure,
            _ticket: Ticket {
                admission: Arc::clone(self),
                id,
                ip,
            },
        })
    }
}

/// Sheds the oldest connection of `table` not proven yet (dropping proven ones it meets from
/// the list); at most one scan of the list.
fn shed_oldest_unproven(table: &mut Table) {
    while let Some((_, standing)) = table.unproven.pop_first() {
        if !standing.is_proven() {
            standing.shed().cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_holds_its_share_and_gets_it_back() {
        let admission = Admission::new(100, 0, 2);
        let a = admission.admit(ip(1)).unwrap();
        let b = admission.admit(ip(1)).unwrap();
        assert!(admission.admit(ip(1)).is_none());
        assert!(admission.admit(ip(2)).is_some());
        drop(a);
        let c = admission.admit(ip(1)).unwrap();
        drop((b, c));
        assert!(admission.table().per_ip.is_empty());
        assert_eq!(admission.table().open, 0);
    }

    #[test]
    fn under_pressure_the_oldest_unproven_connection_is_shed_never_a_proven_one() {
        let admission = Admission::new(4, 1, 10);
        let first = admission.admit(ip(1)).unwrap();
        first.standing.prove();
        let second = admission.admit(ip(1)).unwrap();
        let third = admission.admit(ip(1)).unwrap();
        assert!(!third.under_pressure);
        assert!(!second.standing.shed().is_cancelled());
        // The fourth arrives with only the reserve free: the oldest unproven one goes.
        let fourth = admission.admit(ip(2)).unwrap();
        assert!(fourth.under_pressure);
        assert!(
            !first.standing.shed().is_cancelled(),
            "a proven one is kept"
        );
        assert!(second.standing.shed().is_cancelled());
        assert!(!third.standing.shed().is_cancelled());
        assert!(!fourth.standing.shed().is_cancelled());
    }
}
