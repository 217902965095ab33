//! What the daemon's tasks share, and changing it: reloading the
//! configuration, connecting the systemd launcher.

use crate::admission::{FdBudget, Gauge, LimitHits, PerSource, StartRate, Waiting};
use crate::config::{self, Config};
use crate::launch::exec::ExecLauncher;
use crate::launch::systemd::{self as systemd_launch, SystemdLauncher};
use crate::notify::Notifier;
use crate::sessions::SessionTable;
use crate::startup::{self, FdLimit};
use crate::summary::Summary;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the daemon shares between its tasks.
pub struct State {
    pub config: ArcSwap<Config>,
    pub config_path: PathBuf,
    /// Whether the listening sockets came from systemd.
    pub activated: bool,
    pub sessions: Arc<SessionTable>,
    pub stats: Stats,
    pub notifier: Notifier,
    pub exec: ExecLauncher,
    /// Who tcpmuxd runs as, and whether as a systemd service:
    /// `launcher = "auto"` then means `systemd`, always.
    pub host: config::Host,
    /// Started when first needed.
    pub systemd: std::sync::OnceLock<SystemdLauncher>,
    pub msp: crate::msp::serve::MspState,
    /// Handshakes in progress per source.
    pub sources: Arc<PerSource>,
    /// Session starts per service, for `max_starts_per_second`.
    pub starts: StartRate,
    /// Handshakes still waiting for their name, oldest first, to shed at
    /// `max_handshakes`.
    pub waiting: Arc<Waiting>,
    /// Descriptors connections and sessions may hold.
    pub fds: Arc<FdBudget>,
    /// The limit on open files found at startup.
    pub fd_limit: FdLimit,
    /// Connections counted instead of logged one by one.
    pub summary: Summary,
    /// The program of warm session units (`tcpmux-warm`), found beside
    /// tcpmuxd at startup; none: the systemd launcher starts every unit
    /// cold.
    pub warm_helper: Option<PathBuf>,
}

/// Live counters, shown in systemd's `STATUS=` line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections in the handshake phase now.
    pub handshakes: Arc<Gauge>,
    /// Connections handed to a service since startup.
    pub served: AtomicU64,
    /// Connections answered with `-` since startup.
    pub refused: AtomicU64,
    /// How often each limit was hit since startup.
    pub hits: LimitHits,
}

impl State {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        activated: bool,
        notifier: Notifier,
        host: config::Host,
        fd_limit: FdLimit,
    ) -> Self {
        if let Some(w) = startup::fd_warning(&config, fd_limit) {
            tracing::warn!("{w}");
        }
        let summary = Summary::default();
        summary.set_ipv6_source_prefix(config.tcpmux.ipv6_source_prefix);
        crate::log::budget::BUDGET.set_ipv6_source_prefix(config.tcpmux.ipv6_source_prefix);
        State {
            fds: FdBudget::new(startup::fd_budget(&config, fd_limit)),
            fd_limit,
            waiting: Arc::default(),
            summary,
            msp: Default::default(),
            host,
            systemd: std::sync::OnceLock::new(),
            sources: Arc::default(),
            starts: StartRate::default(),
            config: ArcSwap::from_pointee(config),
            config_path,
            activated,
            sessions: Arc::default(),
            stats: Stats::default(),
            notifier,
            exec: ExecLauncher::default(),
            warm_helper: None,
        }
    }

    /// One line for `STATUS=`.
    pub fn status_line(&self) -> String {
        let units = match self.systemd.get() {
            Some(launcher) => {
                let (starting, waiting) = launcher.starts();
                format!(
                    "; units: {starting} starting, {waiting} waiting for a turn, {} warm",
                    launcher.warm_ready_total()
                )
            }
            None => String::new(),
        };
        format!(
            "{} in handshake, {} sessions running; {} handed off, {} refused, {} limits hit; MSP: {} delivered, {} refused, {} remembered{units}",
            self.stats.handshakes.get(),
            self.sessions.total(),
            self.stats.served.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.stats.hits.total(),
            self.msp.delivered.load(Ordering::Relaxed),
            self.msp.refused.load(Ordering::Relaxed),
            self.msp.remembered(),
        )
    }

    /// Reads the configuration again and, when it is valid, serves new
    /// connections with it. Running sessions are not touched; an invalid
    /// configuration leaves the old one in place.
    pub async fn reload(&self) -> Result<(), config::ConfigErrors> {
        self.notifier.reloading();
        let result = config::load(&self.config_path, &self.host).map(|new| {
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            if !self.activated && self.config.load().tcpmux.listen != new.tcpmux.listen {
                tracing::warn!(
                    "[tcpmux] listen changed: the new addresses take effect at the next restart"
                );
            }
            if let Some(w) = startup::fd_warning(&new, self.fd_limit) {
                tracing::warn!("{w}");
            }
            self.fds
                .set_capacity(startup::fd_budget(&new, self.fd_limit));
            let changes = config::describe_changes(&self.config.load(), &new);
            tracing::info!(
                services = new.services.len(),
                "reload: {changes} ({} services, from {})",
                new.services.len(),
                self.config_path.display()
            );
            self.starts.retain(|name| new.service(name).is_some());
            self.summary
                .set_ipv6_source_prefix(new.tcpmux.ipv6_source_prefix);
            crate::log::budget::BUDGET.set_ipv6_source_prefix(new.tcpmux.ipv6_source_prefix);
            self.config.store(Arc::new(new));
        });
        if let Err(e) = &result {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
        }
        self.start_systemd_if_needed().await;
        self.notifier.ready();
        result
    }

    /// Whether the current configuration has services for the systemd
    /// launcher.
    fn wants_systemd(&self) -> bool {
        let config = self.config.load();
        let msp_command = config.msp.deliver == config::Delivery::Command;
        (self.host.under_systemd && msp_command)
            || config
                .services
                .iter()
                .any(|s| !s.launcher.runs_exec(&self.host))
    }

    /// Connects the systemd launcher when the configuration needs it, and
    /// tells it the services (to find template unit files that would make
    /// every start fail).
    pub async fn start_systemd_if_needed(&self) {
        if self.systemd.get().is_none() && self.wants_systemd() {
            let config = self.config.load_full();
            let launcher = SystemdLauncher::start(
                systemd_launch::system_bus(),
                Arc::clone(&self.sessions),
                &config,
                self.warm_helper.clone(),
            )
            .await;
            let _ = self.systemd.set(launcher);
        }
        if let Some(launcher) = self.systemd.get() {
            let config = self.config.load_full();
            launcher.set_services(&config, &self.host);
            // D-Bus may be slow: never hold up the caller (signal handling).
            let launcher = launcher.clone();
            tokio::spawn(async move { launcher.check_templates().await });
        }
    }
}
