//! Warm session units: per service, units of the service's template
//! started ahead of need with the helper `tcpmux-warm` as their program,
//! their sandbox already in place, each waiting on its standard input for
//! a connection. The systemd launcher hands a connection to one in a
//! `sendmsg`, instead of waiting for systemd to build a sandbox.
//!
//! This module keeps the pools and talks the hand-over protocol
//! ([`super::handover`]) on tcpmuxd's side; the systemd launcher starts the
//! units.

use super::handover::{self, MAX_MESSAGE, Status};
use crate::config::{Config, Service};
use crate::limits;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// A warm unit that said it is ready.
#[derive(Debug)]
pub struct Ready {
    pub unit: String,
    /// tcpmuxd's end of the unit's standard input. Dropping it retires the
    /// unit: the helper exits on EOF.
    pub control: OwnedFd,
    pub since: Instant,
    /// The name under which the unit's manager gives a cold unit's program
    /// the connection as a passed descriptor (`ExtraFileDescriptors=`,
    /// systemd 257 and later): the helper gives this unit's program the
    /// same. None: standard input and output alone.
    pub fd_name: Option<&'static str>,
}

impl Ready {
    /// Whether the helper still waits: no EOF, and nothing it should not
    /// have sent.
    pub fn waiting(&self) -> bool {
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.control,
            &mut byte,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ) {
            Err(rustix::io::Errno::AGAIN) => true,
            Err(_) | Ok(_) => false,
        }
    }
}

/// One service's warm units.
#[derive(Debug)]
pub struct Pool {
    /// The service as configured when the pool was made; units started for
    /// another version of it are never handed a connection.
    pub service: Arc<Service>,
    /// Changes whenever the pool is replaced, so that a start that ends
    /// afterwards knows its unit is not wanted.
    pub generation: u64,
    pub ready: VecDeque<Ready>,
    pub starting: usize,
    /// Warm starts that failed in a row.
    pub failures: u32,
    pub retry_at: Option<Instant>,
    pub last_error: Option<String>,
    /// The service's program cannot run (missing when the configuration
    /// was loaded, or in the units' sandbox): no unit is started for it
    /// until a reload, or a cold start of it that succeeds.
    pub unstartable: bool,
}

impl Pool {
    fn new(service: Arc<Service>, generation: u64) -> Self {
        Pool {
            service,
            generation,
            ready: VecDeque::new(),
            starting: 0,
            failures: 0,
            retry_at: None,
            last_error: None,
            unstartable: false,
        }
    }

    fn size(&self) -> usize {
        self.ready.len() + self.starting
    }
}

/// Why a warm unit did not become ready.
#[derive(Debug)]
pub enum WarmFailure {
    /// The helper found, in the unit's sandbox, that the program cannot
    /// run there (not found, not executable): nothing changes that until
    /// the configuration is loaded again.
    Program(String),
    /// The unit did not start, or its helper did not answer.
    Start(String),
}

/// The pause after `failures` failed warm starts in a row: doubling from
/// [`limits::WARM_BACKOFF_MIN`] up to [`limits::WARM_BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    limits::WARM_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(limits::WARM_BACKOFF_MAX)
}

/// Every service's pool, and the bounds on them all.
#[derive(Debug, Default)]
pub struct Pools {
    /// The helper's path; none: no warm units at all.
    pub helper: Option<PathBuf>,
    /// `[tcpmux] max_warm`.
    pub max_total: usize,
    /// By lowercase service name, in configuration order.
    pools: HashMap<String, Pool>,
    order: Vec<String>,
    /// Warm starts in progress, all services together.
    pub starting_total: usize,
    /// Sessions whose unit is being started cold now: while there are
    /// any, no refill begins, so that refills do not compete with them for
    /// the service manager (the pool is drained: clients come faster than
    /// units start).
    pub cold_starting: usize,
    /// Units ready or starting: not sessions, whatever a listing of units
    /// says.
    pub units: HashSet<String>,
    next_generation: u64,
}

/// A warm start the caller should begin.
#[derive(Debug)]
pub struct Start {
    pub key: String,
    pub generation: u64,
    pub service: Arc<Service>,
}

/// Whether a service gets warm units: it runs under the systemd launcher,
/// has a command for the helper to exec, and asks for some.
pub fn wants_warm(service: &Service) -> bool {
    service.command.is_some() && service.warm > 0
}

impl Pools {
    pub fn new(helper: Option<PathBuf>) -> Self {
        Pools {
            helper,
            ..Pools::default()
        }
    }

    /// Takes the services of a (new) configuration that start units
    /// through the systemd launcher. A pool whose service changed or went
    /// away is dropped, and its units with it (they exit on EOF).
    pub fn set_services<'a>(
        &mut self,
        config: &Config,
        services: impl Iterator<Item = &'a Arc<Service>>,
    ) {
        self.max_total = config.tcpmux.max_warm;
        let mut pools = HashMap::new();
        let mut order = Vec::new();
        let enabled = self.helper.is_some();
        for service in services.filter(|s| enabled && wants_warm(s)) {
            let key = service.name.to_ascii_lowercase();
            let mut pool = match self.pools.remove(&key) {
                Some(mut pool) if *pool.service == **service => {
                    pool.service = Arc::clone(service);
                    pool
                }
                _ => {
                    self.next_generation += 1;
                    Pool::new(Arc::clone(service), self.next_generation)
                }
            };
            // Every load tries again. A program missing here is warned
            // about with the configuration's warnings, once.
            pool.unstartable = service
                .program()
                .is_some_and(|p| super::check_program(p).is_err());
            if !pool.unstartable && pool.last_error.is_some() && pool.failures == 0 {
                pool.last_error = None;
            }
            order.push(key.clone());
            pools.insert(key, pool);
        }
        for (_, old) in self.pools.drain() {
            for unit in old.ready {
                self.units.remove(&unit.unit);
            }
        }
        self.pools = pools;
        self.order = order;
    }

    /// Retires units that died, waited [`limits::WARM_MAX_AGE`], or are
    /// over `max_warm`; returns the starts to make now, at most
    /// [`limits::WARM_MAX_STARTING`] in progress at once and none for a
    /// service in backoff.
    pub fn plan(&mut self, now: Instant) -> Vec<Start> {
        for key in &self.order {
            let Some(pool) = self.pools.get_mut(key) else {
                continue;
            };
            let units = &mut self.units;
            pool.ready.retain(|r| {
                let keep = r.waiting() && now.duration_since(r.since) < limits::WARM_MAX_AGE;
                if !keep {
                    units.remove(&r.unit);
                }
                keep
            });
        }
        // Over max_warm (lowered by a reload): the last services give up
        // their ready units first.
        let mut total: usize = self.pools.values().map(Pool::size).sum();
        for key in self.order.iter().rev() {
            let Some(pool) = self.pools.get_mut(key) else {
                continue;
            };
            while total > self.max_total {
                let Some(unit) = pool.ready.pop_back() else {
                    break;
                };
                self.units.remove(&unit.unit);
                total -= 1;
            }
        }
        let mut starts = Vec::new();
        for key in &self.order {
            let Some(pool) = self.pools.get_mut(key) else {
                continue;
            };
            if pool.unstartable
                || pool.retry_at.is_some_and(|at| now < at)
                || self.cold_starting > 0
            {
                continue;
            }
            while pool.size() < pool.service.warm
                && total < self.max_total
                && self.starting_total < limits::WARM_MAX_STARTING
            {
                pool.starting += 1;
                self.starting_total += 1;
                total += 1;
                starts.push(Start {
                    key: key.clone(),
                    generation: pool.generation,
                    service: Arc::clone(&pool.service),
                });
            }
        }
        starts
    }

    /// Notes a unit whose start began.
    pub fn starting(&mut self, unit: &str) {
        self.units.insert(unit.to_string());
    }

    /// Records how a warm start ended. A unit no longer wanted (its pool
    /// was replaced) is dropped, and so retired.
    pub fn finished(&mut self, start: &Start, unit: &str, result: Result<Ready, WarmFailure>) {
        self.starting_total = self.starting_total.saturating_sub(1);
        let pool = match self.pools.get_mut(&start.key) {
            Some(pool) if pool.generation == start.generation => pool,
            _ => {
                self.units.remove(unit);
                return;
            }
        };
        pool.starting = pool.starting.saturating_sub(1);
        match result {
            Ok(ready) => {
                pool.failures = 0;
                pool.retry_at = None;
                pool.last_error = None;
                pool.ready.push_back(ready);
            }
            // Said once: no unit of the service is started again until a
            // reload, so nothing fails again.
            Err(WarmFailure::Program(e)) => {
                self.units.remove(unit);
                if !pool.unstartable {
                    tracing::error!(
                        tcpmux_service = %pool.service.name,
                        "service \"{}\": its program cannot run in its units: {e}; clients are \
                         refused, and no unit is started for it until the next reload",
                        pool.service.name,
                    );
                }
                pool.unstartable = true;
                pool.last_error = Some(e);
            }
            Err(WarmFailure::Start(e)) => {
                self.units.remove(unit);
                pool.failures = pool.failures.saturating_add(1);
                let pause = backoff(pool.failures);
                pool.retry_at = Some(Instant::now() + pause);
                tracing::error!(
                    tcpmux_service = %pool.service.name,
                    "service \"{}\": warm unit failed to start: {e}; clients are refused until a \
                     start succeeds, next try in {}",
                    pool.service.name,
                    humantime::format_duration(pause)
                );
                pool.last_error = Some(e);
            }
        }
    }

    /// A session of `service` started cold: its program runs after all,
    /// so its pool fills again (it was installed since the last load).
    pub fn started_cold(&mut self, service: &Service) {
        if let Some(pool) = self.pools.get_mut(&service.name.to_ascii_lowercase())
            && pool.unstartable
            && pool.last_error.is_none()
        {
            pool.unstartable = false;
        }
    }

    /// A ready unit for a connection to `service`, if its pool has one for
    /// this very configuration of the service.
    pub fn take(&mut self, service: &Service) -> Option<Ready> {
        let pool = self.pools.get_mut(&service.name.to_ascii_lowercase())?;
        if *pool.service != *service {
            return None;
        }
        while let Some(ready) = pool.ready.pop_front() {
            self.units.remove(&ready.unit);
            if ready.waiting() {
                return Some(ready);
            }
        }
        None
    }

    /// Why `service` cannot start now, when its last warm start failed.
    pub fn failing(&self, service: &Service) -> Option<String> {
        let pool = self.pools.get(&service.name.to_ascii_lowercase())?;
        pool.last_error.clone()
    }

    /// Ready units of service `name`.
    pub fn ready(&self, name: &str) -> usize {
        self.pools
            .get(&name.to_ascii_lowercase())
            .map_or(0, |p| p.ready.len())
    }

    /// Ready units, all services together.
    pub fn ready_total(&self) -> usize {
        self.pools.values().map(|p| p.ready.len()).sum()
    }
}

/// A socket pair for a warm unit's standard input or a hand-over's status:
/// (tcpmuxd's end, non-blocking; the helper's end, blocking). Both are
/// close-on-exec in tcpmuxd.
pub fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let flags = rustix::fs::fcntl_getfl(&ours)?;
    rustix::fs::fcntl_setfl(&ours, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok((ours, theirs))
}

/// Waits up to `limit` for one message on `socket` (non-blocking):
/// `Ok(None)` is EOF.
pub async fn receive(
    socket: OwnedFd,
    limit: Duration,
) -> Result<(Option<Status>, OwnedFd), String> {
    // SAFETY: an OwnedFd stays open, and is the same descriptor, for as
    // long as the AsyncFd owns it.
    let socket = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|e| format!("watching the helper's socket: {}", e.into_parts().1))?;
    let wait = async {
        loop {
            let mut guard = socket.readable().await?;
            let mut buf = [0u8; MAX_MESSAGE];
            match guard.try_io(|s| handover::recv(s.get_ref(), &mut buf, true)) {
                Ok(Ok((0, _))) => return Ok(None),
                Ok(Ok((n, _fds))) => return Ok(Some(buf[..n].to_vec())),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    };
    let message = match tokio::time::timeout(limit, wait).await {
        Err(_) => {
            return Err(format!(
                "no word from the helper within {}",
                humantime::format_duration(limit)
            ));
        }
        Ok(Err(e)) => return Err(format!("reading from the helper: {e}")),
        Ok(Ok(m)) => m,
    };
    let status = match message {
        None => None,
        Some(m) => Some(handover::parse_status(&m)?),
    };
    Ok((status, socket.into_inner()))
}

/// Hands `connection` to a ready unit, with the connection's variables (and
/// the unit's descriptor name, if any) and the helper's end of a fresh
/// status socket; returns tcpmuxd's end.
pub fn hand_over(
    ready: &Ready,
    connection: std::os::fd::BorrowedFd<'_>,
    variables: &[(&str, String)],
) -> std::io::Result<OwnedFd> {
    let (status, theirs) = socket_pair()?;
    let message = handover::encode_handover(variables, ready.fd_name);
    handover::send(
        ready.control.as_fd(),
        &message,
        &[connection, theirs.as_fd()],
        true,
    )?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools_for(text: &str) -> Pools {
        let path = PathBuf::from("main.toml");
        let file = crate::config::parse_file(&path, text).unwrap();
        let config = crate::config::build(vec![(path, file)]).unwrap();
        let mut pools = Pools::new(Some(PathBuf::from("/usr/libexec/tcpmuxd/tcpmux-warm")));
        pools.set_services(&config, config.services.iter());
        pools
    }

    #[test]
    fn refills_wait_while_sessions_start_cold() {
        let mut pools =
            pools_for("[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\nwarm = 2\n");
        pools.cold_starting = 1;
        assert!(pools.plan(Instant::now()).is_empty(), "the manager is busy");
        pools.cold_starting = 0;
        assert_eq!(pools.plan(Instant::now()).len(), 2);
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        assert_eq!(backoff(1), limits::WARM_BACKOFF_MIN);
        assert_eq!(backoff(2), limits::WARM_BACKOFF_MIN * 2);
        assert_eq!(backoff(3), limits::WARM_BACKOFF_MIN * 4);
        assert_eq!(backoff(40), limits::WARM_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), limits::WARM_BACKOFF_MAX);
    }
}
