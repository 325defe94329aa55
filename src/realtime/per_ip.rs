//! `SWAPCAST_MAX_CONNECTIONS_PER_IP`: how many WebSocket connections one peer address may hold.
//! A place is taken at the handshake and given back when the session ends (the [`Place`] is
//! dropped with it), so a peer that opens connections in a loop is refused with 1013 — the close
//! code for "try again later" — instead of exhausting the node. Behind a load balancer every
//! client has the balancer's address: leave it off (0) there, or set it far above one client's need.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct PerIp {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// The address holds its maximum already.
#[derive(Debug)]
pub struct Full;

/// One connection's place; gives it back when dropped.
pub struct Place {
    ip: IpAddr,
    table: Arc<PerIp>,
}

impl PerIp {
    /// A place for one more connection from `ip`, or `None` when it holds `max` already
    /// (`max` 0: no limit, and nothing is counted).
    pub fn take(table: &Arc<PerIp>, ip: IpAddr, max: usize) -> Result<Option<Place>, Full> {
        if max == 0 {
            return Ok(None);
        }
        let mut held = table.lock();
        let count = held.entry(ip).or_insert(0);
        if *count >= max {
            return Err(Full);
        }
        *count += 1;
        Ok(Some(Place {
            ip,
            table: table.clone(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_given_back() {
        let table = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = PerIp::take(&table, a, 2).unwrap();
        let second = PerIp::take(&table, a, 2).unwrap();
        assert!(PerIp::take(&table, a, 2).is_err(), "a third from one address");
        assert!(PerIp::take(&table, b, 2).unwrap().is_some(), "another address");
        drop(first);
        assert!(PerIp::take(&table, a, 2).is_ok(), "a place given back");
        drop(second);
        assert!(
            PerIp::take(&table, a, 0).unwrap().is_none(),
            "0: no limit, nothing counted"
        );
    }
}
