//! What the daemon's tasks share, and changing it: reloading the
//! configuration, connecting the systemd launcher.

use crate::admission::{FdBudget, Gauge, LimitHits, PerSource, StartRate, Waiting};
use crate::config::{self, Config};
use crate::launch::exec::ExecLauncher;
use crate::launch::forward::ForwardLauncher;
use crate::launch::pass::PassLauncher;
use crate::launch::systemd::{self as systemd_launch, SystemdLauncher};
use crate::notify::Notifier;
use crate::sessions::SessionTable;
use crate::startup::{self, FdLimit};
use crate::summary::Summary;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocols one tcpmuxd process serves (`--only`): under systemd,
/// `tcpmuxd.service` serves TCPMUX and `tcpmuxd-msp.service` MSP, so that
/// either can be turned on, off or restarted without the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serves {
    pub tcpmux: bool,
    pub msp: bool,
}

impl Serves {
    pub const BOTH: Serves = Serves {
        tcpmux: true,
        msp: true,
    };

    /// What `--only` asks for; without it, both.
    pub fn only(protocol: Option<crate::cli::tcpmuxd::Protocol>) -> Serves {
        use crate::cli::tcpmuxd::Protocol;
        match protocol {
            None => Serves::BOTH,
            Some(Protocol::Tcpmux) => Serves {
                tcpmux: true,
                msp: false,
            },
            Some(Protocol::Msp) => Serves {
                tcpmux: false,
                msp: true,
            },
        }
    }

    /// The systemd unit that runs such a process, as the shipped units name
    /// it: for what an administrator is told to do.
    pub fn unit(self) -> &'static str {
        if self.tcpmux {
            "tcpmuxd"
        } else {
            "tcpmuxd-msp"
        }
    }

    /// `config` as this process serves it: without TCPMUX, no services,
    /// so that nothing of TCPMUX (warm units, the launcher's bus
    /// connection, HELP) is set up for them.
    pub fn apply(self, mut config: Config) -> Config {
        if !self.tcpmux {
            config.services.clear();
        }
        config
    }
}

/// A configuration error on one line, for `STATUS=` (a line of its own in
/// the notification): the lines of a TOML parser's excerpt (`18 | [x]`,
/// `   |  ^^^`) are left out, the rest joined with "; ".
fn one_line(error: &str) -> String {
    let excerpt = |line: &str| {
        line.split_once('|')
            .is_some_and(|(before, _)| before.trim().chars().all(|c| c.is_ascii_digit()))
    };
    error
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !excerpt(line))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the daemon shares between its tasks.
pub struct State {
    pub config: ArcSwap<Config>,
    pub config_path: PathBuf,
    /// The protocols this process serves.
    pub serves: Serves,
    /// Why nothing is served: the configuration was invalid when tcpmuxd
    /// started socket-activated, and no valid one has been loaded since.
    /// `config` then serves nothing, and every request is answered
    /// `-Service unavailable` (MSP: refused over TCP, silence over UDP),
    /// so that a typo never closes the port (systemd would otherwise
    /// restart tcpmuxd until its socket fails).
    pub unavailable: ArcSwapOption<String>,
    /// Whether the listening sockets came from systemd.
    pub activated: bool,
    pub sessions: Arc<SessionTable>,
    pub stats: Stats,
    pub notifier: Notifier,
    pub exec: ExecLauncher,
    pub forward: ForwardLauncher,
    pub pass: PassLauncher,
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
        if let Some(w) = crate::launch::spawn::user_switch_warning_for(&config, &host) {
            tracing::warn!("{w}");
        }
        let summary = Summary::default();
        summary.set_ipv6_source_prefix(config.tcpmux.ipv6_source_prefix);
        crate::log::budget::BUDGET.set_ipv6_source_prefix(config.tcpmux.ipv6_source_prefix);
        crate::log::budget::REFUSALS.set_ipv6_source_prefix(config.tcpmux.ipv6_source_prefix);
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
            serves: Serves::BOTH,
            unavailable: ArcSwapOption::empty(),
            activated,
            sessions: Arc::default(),
            stats: Stats::default(),
            notifier,
            exec: ExecLauncher,
            forward: ForwardLauncher,
            pass: PassLauncher::default(),
            warm_helper: None,
        }
    }

    /// Serves nothing from now on, for `reason` (where the configuration's
    /// errors are: `STATUS=` shows it to every local user, so never what
    /// they say, which may quote a secret), until a reload loads a valid
    /// configuration.
    pub fn set_unavailable(&self, reason: String) {
        self.unavailable.store(Some(Arc::new(reason)));
    }

    /// The reason nothing is served, if nothing is.
    pub fn unavailable_reason(&self) -> Option<Arc<String>> {
        self.unavailable.load_full()
    }

    /// Reads the configuration as this process serves it.
    fn load_config(&self) -> Result<Config, config::ConfigErrors> {
        config::load(&self.config_path, &self.host).map(|c| self.serves.apply(c))
    }

    /// One line for `STATUS=`.
    pub fn status_line(&self) -> String {
        if let Some(reason) = self.unavailable_reason() {
            return format!(
                "not serving, every request refused: invalid configuration: {} (see the \
                 journal); fix it, then systemctl reload {}",
                one_line(&reason),
                self.serves.unit()
            );
        }
        let msp = format!(
            "MSP: {} delivered, {} refused, {} remembered",
            self.msp.delivered.load(Ordering::Relaxed),
            self.msp.refused.load(Ordering::Relaxed),
            self.msp.remembered(),
        );
        if !self.serves.tcpmux {
            return msp;
        }
        // Each daemon's line names only what it serves.
        let msp = if self.serves.msp {
            format!("; {msp}")
        } else {
            String::new()
        };
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
            "{} in handshake, {} sessions running; {} handed off, {} refused, {} limits hit{msp}{units}",
            self.stats.handshakes.get(),
            self.sessions.total(),
            self.stats.served.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.stats.hits.total(),
        )
    }

    /// Reads the configuration again and, when it is valid, serves new
    /// connections with it. Running sessions are not touched; an invalid
    /// configuration leaves the old one in place.
    pub async fn reload(&self) -> Result<(), config::ConfigErrors> {
        self.notifier.reloading();
        let result = self.load_config().map(|new| {
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            if !self.activated && self.config.load().tcpmux.listen != new.tcpmux.listen {
                tracing::warn!(
                    "[tcpmux] listen changed: the new addresses take effect at the next restart"
                );
            }
            if self.config.load().tcpmux.defer_accept != new.tcpmux.defer_accept {
                tracing::warn!(
                    "[tcpmux] defer_accept changed: the new value takes effect at the next restart"
                );
            }
            if let Some(w) = startup::fd_warning(&new, self.fd_limit) {
                tracing::warn!("{w}");
            }
            if let Some(w) = crate::launch::spawn::user_switch_warning_for(&new, &self.host) {
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
            self.pass.retain(&new);
            self.summary
                .set_ipv6_source_prefix(new.tcpmux.ipv6_source_prefix);
            crate::log::budget::BUDGET.set_ipv6_source_prefix(new.tcpmux.ipv6_source_prefix);
            crate::log::budget::REFUSALS.set_ipv6_source_prefix(new.tcpmux.ipv6_source_prefix);
            self.config.store(Arc::new(new));
            if self.unavailable.swap(None).is_some() {
                tracing::info!("the configuration is valid: serving again");
            }
        });
        if let Err(e) = &result {
            if self.unavailable_reason().is_some() {
                tracing::error!(
                    "reload failed, still serving nothing (every request refused): invalid \
                     configuration: {e}"
                );
                self.set_unavailable(e.whereabouts());
            } else {
                tracing::error!("reload failed, still serving the previous configuration: {e}");
            }
        }
        self.start_systemd_if_needed().await;
        self.notifier.ready_with_status(&self.status_line());
        result
    }

    /// Whether the current configuration has services for the systemd
    /// launcher.
    fn wants_systemd(&self) -> bool {
        let config = self.config.load();
        let msp_command = self.serves.msp && config.msp.deliver == config::Delivery::Command;
        (self.host.under_systemd && msp_command)
            || config
                .services
                .iter()
                .any(|s| s.launcher.runs_systemd(&self.host))
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

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_parse_error_fits_on_one_status_line() {
        let error = "/etc/tcpmuxd/tcpmuxd.toml: TOML parse error at line 18, column 2\n   |\n\
                     18 | [tcpmux]\n   |  ^^^^^^\nduplicate key\n";
        assert_eq!(
            one_line(error),
            "/etc/tcpmuxd/tcpmuxd.toml: TOML parse error at line 18, column 2; duplicate key"
        );
        assert_eq!(
            one_line("a.toml: line 3: unknown key"),
            "a.toml: line 3: unknown key"
        );
    }
}
