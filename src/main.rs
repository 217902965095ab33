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
use tcpmuxd::server::{self, State};
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

    let host = config::Host::current(under_systemd);
    let config = match config::load(&args.config, &host) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }

    let (sockets, is_activated) = match activated {
        Ok(Some(sockets)) => (sockets, true),
        Ok(None) => match bind_all(&config) {
            Ok(sockets) => (sockets, false),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(exit::OSERR);
            }
        },
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::OSERR);
        }
    };
    if sockets.tcpmux.is_empty() {
        tracing::error!(
            "socket activation passed no socket named \"{}\": nothing to serve",
            listen::FDNAME_TCPMUX
        );
        return ExitCode::from(exit::OSERR);
    }
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
    state.warm_helper = startup::warm_helper();
    if host.under_systemd && state.warm_helper.is_none() {
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

/// Binds the configured TCPMUX addresses, and MSP's for TCP and UDP.
fn bind_all(config: &config::Config) -> Result<Sockets, listen::ListenError> {
    Ok(Sockets {
        tcpmux: listen::bind_tcp(&config.tcpmux.listen)?,
        msp_stream: listen::bind_tcp(&config.msp.listen)?,
        msp_datagram: listen::bind_udp(&config.msp.listen)?,
    })
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
                if service.command.is_none() && service.launcher != config::LauncherKind::Exec {
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
