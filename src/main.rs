//! tcpmuxd: startup only. Parse the command line, read the environment,
//! take the sockets, then hand over to the server.

use std::process::ExitCode;
use std::sync::Arc;
use tcpmuxd::cli::exit;
use tcpmuxd::cli::tcpmuxd::Args;
use tcpmuxd::config;
use tcpmuxd::listen::{self, Sockets};
use tcpmuxd::log;
use tcpmuxd::notify::Notifier;
use tcpmuxd::server::{self, Serves, State};
use tcpmuxd::startup;

fn main() -> ExitCode {
    // First of all: nothing the daemon was started with may reach a
    // session's program.
    let inherited = startup::close_inherited_on_exec().and(startup::forbid_tracing());
    let args = match exit::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.check {
        return check(&args);
    }

    // Everything read from the environment is read here, before any thread
    // exists; the socket and watchdog variables are removed so that no
    // child inherits them.
    // The journal also when run by systemd with stderr elsewhere, as long as
    // its socket is there.
    let connected_to_journal = libsystemd::logging::connected_to_journal()
        || (std::env::var_os("INVOCATION_ID").is_some()
            && std::path::Path::new("/run/systemd/journal/socket").exists());
    let notify_socket = std::env::var_os("NOTIFY_SOCKET").map(std::path::PathBuf::from);
    // Run as a systemd service (not merely on a systemd host): the default
    // launcher then starts each session as a unit.
    // INVOCATION_ID alone is inherited by anything a service starts; being
    // a child of PID 1 makes it ours.
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
        && rustix::process::getppid().is_some_and(|p| p.is_init())
        && sd_notify::booted().unwrap_or(false);
    // SAFETY: no other thread exists yet.
    let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };
    // SAFETY: as above.
    let activated = unsafe { listen::take_activated() };

    if let Err(e) = log::init(args.log_target, &args.log_level, connected_to_journal) {
        eprintln!("tcpmuxd: {e}");
        return ExitCode::from(exit::UNAVAILABLE);
    }
    if let Err(e) = inherited {
        tracing::error!("{e}");
        return ExitCode::from(exit::OSERR);
    }
    let (mut fd_limit, fd_problem) = startup::raise_fd_limit();
    if let Some(problem) = fd_problem {
        tracing::warn!("{problem}");
    }
    let notifier = Notifier::new(notify_socket, watchdog);

    let serves = Serves::only(args.only);
    let host = config::Host::current(under_systemd);
    let loaded = config::load(&args.config, &host).map(|c| serves.apply(c));
    if let Ok(config) = &loaded {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
    }

    let (sockets, is_activated) = match activated {
        Ok(Some(sockets)) => match activated_for(sockets, serves) {
            Ok(sockets) => (sockets, true),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(exit::OSERR);
            }
        },
        Ok(None) => {
            // Nothing to hold: an invalid configuration ends tcpmuxd here.
            let config = match &loaded {
                Ok(config) => config,
                Err(e) => {
                    tracing::error!("invalid configuration: {e}");
                    return ExitCode::from(exit::CONFIG);
                }
            };
            match bind_all(config, serves) {
                Ok(sockets) => (sockets, false),
                Err(Unbound::Config(e)) => {
                    tracing::error!("{e}");
                    return ExitCode::from(exit::CONFIG);
                }
                Err(Unbound::Listen(e)) => {
                    tracing::error!("{e}");
                    return ExitCode::from(exit::OSERR);
                }
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    // Socket-activated with an invalid configuration: hold the sockets and
    // refuse every request rather than exit, so that systemd neither
    // restarts tcpmuxd in a loop nor fails the socket (closing the port)
    // for a configuration error. A reload with a valid one serves again.
    let (config, unavailable) = match loaded {
        Ok(config) => (config, None),
        Err(e) => match config::serving_nothing(&args.config) {
            Ok(nothing) => {
                tracing::error!(
                    "invalid configuration: {e}; not serving: every request is refused until \
                     the configuration is fixed and reloaded (systemctl reload {})",
                    serves.unit()
                );
                (serves.apply(nothing), Some(e.whereabouts()))
            }
            Err(_) => {
                tracing::error!("invalid configuration: {e}");
                return ExitCode::from(exit::CONFIG);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    // What is open now (listeners, runtime, journal, whatever was
    // inherited) is not there for connections.
    fd_limit.open = startup::open_fds();
    let mut state = State::new(config, args.config, is_activated, notifier, host, fd_limit);
    state.serves = serves;
    if let Some(reason) = unavailable {
        state.set_unavailable(reason);
    }
    state.warm_helper = serves.tcpmux.then(startup::warm_helper).flatten();
    if serves.tcpmux && host.under_systemd && state.warm_helper.is_none() {
        tracing::warn!(
            "{} is installed neither beside tcpmuxd nor as {}: the systemd launcher starts every session's unit when its client comes",
            startup::WARM_HELPER,
            startup::WARM_HELPER_INSTALLED
        );
    }
    let state = Arc::new(state);
    match runtime.block_on(server::serve(sockets, state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(exit::OSERR)
        }
    }
}

/// Why tcpmuxd could not bind its own sockets.
enum Unbound {
    /// The configuration gives nothing to serve.
    Config(String),
    Listen(listen::ListenError),
}

/// Binds what this process serves: the configured TCPMUX addresses, and
/// MSP's for TCP and UDP.
fn bind_all(config: &config::Config, serves: Serves) -> Result<Sockets, Unbound> {
    let main = config
        .files
        .first()
        .map_or_else(|| "the configuration".into(), |f| f.display().to_string());
    if serves.tcpmux && config.tcpmux.listen.is_empty() {
        return Err(Unbound::Config(format!(
            "[tcpmux] listen in {main} is empty: nothing to serve (set it, or run \
             socket-activated by tcpmuxd.socket)"
        )));
    }
    if !serves.tcpmux && config.msp.listen.is_empty() {
        return Err(Unbound::Config(format!(
            "--only msp: [msp] listen in {main} is empty: nothing to serve (set it, or run \
             socket-activated by tcpmuxd-msp.socket)"
        )));
    }
    let tcp = |addrs, wanted| {
        if wanted {
            listen::bind_tcp(addrs).map_err(Unbound::Listen)
        } else {
            Ok(Vec::new())
        }
    };
    Ok(Sockets {
        tcpmux: tcp(&config.tcpmux.listen, serves.tcpmux)?,
        msp_stream: tcp(&config.msp.listen, serves.msp)?,
        msp_datagram: if serves.msp {
            listen::bind_udp(&config.msp.listen).map_err(Unbound::Listen)?
        } else {
            Vec::new()
        },
    })
}

/// The passed sockets this process serves: the one it needs must be
/// there; the other protocol's are closed here (systemd keeps its own
/// copy, listening), with a warning naming the fix.
fn activated_for(mut sockets: Sockets, serves: Serves) -> Result<Sockets, String> {
    if serves.tcpmux && sockets.tcpmux.is_empty() {
        return Err(format!(
            "socket activation passed no socket named \"{}\": nothing to serve \
             (FileDescriptorName={} in tcpmuxd.socket)",
            listen::FDNAME_TCPMUX,
            listen::FDNAME_TCPMUX
        ));
    }
    if !serves.tcpmux && sockets.msp_stream.is_empty() && sockets.msp_datagram.is_empty() {
        return Err(format!(
            "--only msp: socket activation passed no socket named \"{}\": nothing to serve \
             (FileDescriptorName={} in tcpmuxd-msp.socket)",
            listen::FDNAME_MSP,
            listen::FDNAME_MSP
        ));
    }
    if !serves.tcpmux && !sockets.tcpmux.is_empty() {
        tracing::warn!(
            "--only msp: the sockets named \"{}\" passed are not served (they belong to \
             tcpmuxd.service)",
            listen::FDNAME_TCPMUX
        );
        sockets.tcpmux.clear();
    }
    let has_msp = !sockets.msp_stream.is_empty() || !sockets.msp_datagram.is_empty();
    if !serves.msp && has_msp {
        tracing::warn!(
            "--only tcpmux: the sockets named \"{}\" passed are not served: MSP is served by \
             tcpmuxd-msp.service (Service=tcpmuxd-msp.service in tcpmuxd-msp.socket)",
            listen::FDNAME_MSP
        );
        sockets.msp_stream.clear();
        sockets.msp_datagram.clear();
    }
    Ok(sockets)
}

/// `--check`: the configuration as tcpmuxd would read it here, as a
/// systemd service when systemd runs this machine; validated and reported
/// on stdout and stderr only. With `--print`, the configuration in force,
/// as TOML, on stdout.
fn check(args: &Args) -> ExitCode {
    let host = config::Host::current(sd_notify::booted().unwrap_or(false));
    match config::load(&args.config, &host) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
            let summary = format!(
                "{}: valid ({}, {}: {})",
                args.config.display(),
                config::count(config.files.len(), "file"),
                config::count(names.len(), "service"),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
            if args.print {
                println!("# {summary}");
                println!(
                    "# The configuration in force{}: every key with its value, drop-ins merged.",
                    if host.root { ", as root" } else { "" }
                );
                print!("{}", config::to_toml(&config));
                return ExitCode::SUCCESS;
            }
            println!("{summary}");
            for service in &config.services {
                if service.command.is_none()
                    && matches!(
                        service.launcher,
                        config::LauncherKind::Auto | config::LauncherKind::Systemd
                    )
                {
                    println!(
                        "service \"{}\": no command (ExecStart= from its unit's drop-ins): no \
                         warm units; under the systemd launcher each session's unit starts cold, \
                         when its client comes",
                        service.name
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "tcpmuxd: invalid configuration: {}",
                config::count(errors.0.len(), "error")
            );
            ExitCode::from(exit::CONFIG)
        }
    }
}
