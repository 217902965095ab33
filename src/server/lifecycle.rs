//! The daemon's lifecycle: taking the listeners, signals (reload, stop),
//! graceful shutdown, and keeping systemd informed.

use super::State;
use super::connection;
use crate::admission::describe_hits;
use crate::limits;
use std::io;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the daemon: serves until SIGTERM or SIGINT, reloads on SIGHUP,
/// keeps systemd informed.
pub async fn serve(sockets: crate::listen::Sockets, state: Arc<State>) -> io::Result<()> {
    let tcpmux = sockets.tcpmux;
    use tokio::signal::unix::{SignalKind, signal};
    let mut listeners = Vec::new();
    for l in tcpmux {
        l.set_nonblocking(true)?;
        match l.local_addr() {
            Ok(addr) => tracing::info!(%addr, "listening for TCPMUX on {addr}"),
            Err(e) => tracing::info!("listening for TCPMUX (address unknown: {e})"),
        }
        if let Some(secs) = state.config.load().tcpmux.defer_accept
            && let Err(e) = crate::listen::set_defer_accept(&l, secs)
        {
            tracing::warn!("[tcpmux] defer_accept: cannot set TCP_DEFER_ACCEPT: {e}");
        }
        // Its connections are accepted as plain sockets (listen::accept_plain).
        // SAFETY: the listener owns its descriptor, and the AsyncFd owns the
        // listener until it is dropped: the descriptor stays open and the
        // same all that time.
        let l = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE)
        }?;
        listeners.push(l);
    }
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    state.start_systemd_if_needed().await;
    let shutdown = CancellationToken::new();
    let msp_tracker = TaskTracker::new();
    let mut msp_loops = Vec::new();
    for l in sockets.msp_stream {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening for MSP on {addr}/tcp");
        }
        msp_loops.push(tokio::spawn(crate::msp::serve::serve_tcp(
            l,
            Arc::clone(&state),
            msp_tracker.clone(),
            shutdown.clone(),
        )));
    }
    for s in sockets.msp_datagram {
        s.set_nonblocking(true)?;
        let s = tokio::net::UdpSocket::from_std(s)?;
        if let Ok(addr) = s.local_addr() {
            tracing::info!(%addr, "listening for MSP on {addr}/udp");
        }
        msp_loops.push(tokio::spawn(crate::msp::serve::serve_udp(
            s,
            Arc::clone(&state),
            msp_tracker.clone(),
            shutdown.clone(),
        )));
    }
    let server = tokio::spawn(connection::run(
        listeners,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    let stopped = CancellationToken::new();
    let background = tokio::spawn(report_status(Arc::clone(&state), stopped.clone()));

    let config = state.config.load();
    let version = env!("CARGO_PKG_VERSION");
    if state.unavailable_reason().is_some() {
        tracing::warn!("tcpmuxd {version} ready, serving nothing: every request is refused");
    } else if !state.serves.tcpmux {
        tracing::info!("tcpmuxd {version} ready, serving the Message Send Protocol only");
    } else {
        tracing::info!(
            services = config.services.len(),
            "tcpmuxd {version} ready, {} services",
            config.services.len()
        );
    }
    drop(config);
    state.notifier.ready_with_status(&state.status_line());

    loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = state.reload().await; }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections; finishing handshakes in progress");
    state.notifier.stopping();
    shutdown.cancel();
    let _ = server.await;
    for l in msp_loops {
        let _ = l.await;
    }
    msp_tracker.close();
    let msp_grace = state.config.load().msp.command_timeout + limits::SHUTDOWN_GRACE;
    let _ = timeout(msp_grace, msp_tracker.wait()).await;
    // The interval in progress is logged too, handshakes finished.
    stopped.cancel();
    let _ = background.await;
    // A forwarded pair is relayed by tcpmuxd itself: it cannot outlive
    // it, and is reset as the runtime goes (see `launch::forward::Relay`).
    let pairs = crate::launch::forward::relaying();
    if pairs > 0 {
        let (pairs_are, their) = match pairs {
            1 => ("1 forwarded pair ends".to_string(), "its"),
            n => (format!("{n} forwarded pairs end"), "their"),
        };
        tracing::info!(
            forwarded_pairs = pairs,
            "{pairs_are} with tcpmuxd: both {their} connections are reset"
        );
    }
    let sessions = state.sessions.total().saturating_sub(pairs);
    tracing::info!(sessions, "stopped; {sessions} sessions keep running");
    Ok(())
}

/// The counts of one interval of `LIMIT_LOG_INTERVAL`, or of the part of
/// one that ran until the stop.
struct Interval {
    started: tokio::time::Instant,
    hits: [u64; crate::admission::Limit::ALL.len()],
}

impl Interval {
    fn start(state: &State) -> Interval {
        Interval {
            started: tokio::time::Instant::now(),
            hits: state.stats.hits.snapshot(),
        }
    }

    /// Logs the limits hit and the summary of connections since the
    /// interval started, if any, and starts the next one.
    fn log(&mut self, state: &State, length: std::time::Duration) {
        let interval = humantime::format_duration(length);
        let now = state.stats.hits.snapshot();
        if let Some(text) = describe_hits(&self.hits, &now) {
            tracing::warn!("limits hit in the last {interval}: {text}");
        }
        if let Some(text) = state.summary.take() {
            tracing::info!("connections in the last {interval}: {text}");
        }
        let held_back = crate::log::budget::BUDGET.take_held_back();
        if held_back > 0 {
            // A count of ordinary events, like the summary: not a warning.
            tracing::info!(
                "{held_back} log entries about single connections left out in the last \
                 {interval}: at most {} a second are written from one source, {} in all",
                crate::log::budget::LOG_LINES_PER_SOURCE_PER_SECOND,
                crate::log::budget::LOG_LINES_PER_SECOND
            );
        }
        *self = Interval {
            started: tokio::time::Instant::now(),
            hits: now,
        };
    }
}

/// Returns the allocator's free memory to the system: after a burst of
/// connections, memory follows the load instead of staying at its peak.
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // has no preconditions and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps `STATUS=` current and feeds the watchdog; logs the summary every
/// `LIMIT_LOG_INTERVAL`, and once more when `stopped` is cancelled, then
/// returns.
async fn report_status(state: Arc<State>, stopped: CancellationToken) {
    let mut last = String::new();
    let mut status_tick = tokio::time::interval(limits::STATUS_INTERVAL);
    let watchdog = state.notifier.watchdog_interval();
    // Without a watchdog the branch below is disabled; the interval only
    // needs some valid period.
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(limits::LIMIT_LOG_INTERVAL));
    let mut limits_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + limits::LIMIT_LOG_INTERVAL,
        limits::LIMIT_LOG_INTERVAL,
    );
    let mut interval = Interval::start(&state);
    loop {
        tokio::select! {
            _ = limits_tick.tick() => {
                interval.log(&state, limits::LIMIT_LOG_INTERVAL);
                state.starts.forget_idle_sources();
                state.msp.prune(state.config.load().msp.dedup_window);
                give_back_free_memory();
            }
            _ = status_tick.tick() => {
                let line = state.status_line();
                if line != last {
                    state.notifier.status(&line);
                    last = line;
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => state.notifier.watchdog(),
            _ = stopped.cancelled() => {
                // Whole seconds, as the periodic line has them.
                let ran = std::time::Duration::from_secs(interval.started.elapsed().as_secs());
                interval.log(&state, ran);
                return;
            }
        }
    }
}
