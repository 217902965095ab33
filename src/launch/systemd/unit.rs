//! The properties of the transient units: a session's, a warm unit's.

use super::*;

pub(super) fn value<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant, LaunchError> {
    OwnedVariant::try_from(v.into()).map_err(|e| LaunchError::Systemd(e.to_string()))
}

/// `ExecStart=` running `program` with `argv`.
pub(super) fn exec_start(program: &str, argv: &[String]) -> Result<OwnedVariant, LaunchError> {
    // systemd expands $VARIABLES in ExecStart at run time; the exec
    // launcher does not, and neither must this one.
    let argv: Vec<String> = argv.iter().map(|a| a.replace('$', "$$")).collect();
    let exec: Vec<(String, Vec<String>, bool)> = vec![(program.to_string(), argv, false)];
    value(exec)
}

/// `UMask=` and the `Limit*=` of a service (the same for its cold and its
/// warm units) or of MSP's delivery command. (A drop-in of the unit that
/// sets one wins over these.)
pub(super) fn resources(
    umask: u32,
    limits: &crate::config::ResourceLimits,
    props: &mut Vec<(String, OwnedVariant)>,
) -> Result<(), LaunchError> {
    props.push(("UMask".into(), value(umask)?));
    for (kind, v) in limits.set() {
        // systemd's infinity is RLIM_INFINITY, as ours.
        props.push((kind.property().into(), value(v)?));
    }
    Ok(())
}

pub(super) fn credentials(
    cred: Option<&Credentials>,
    props: &mut Vec<(String, OwnedVariant)>,
) -> Result<(), LaunchError> {
    if let Some(cred) = cred {
        props.push(("User".into(), value(cred.user.clone())?));
        // systemd adds the user's own supplementary groups, never
        // tcpmuxd's.
        props.push(("Group".into(), value(cred.gid.to_string())?));
    }
    Ok(())
}

/// `SyslogIdentifier=` of a session's unit, warm or cold: `tcpmux-NAME`,
/// as the exec launcher tags its sessions' lines.
pub(super) fn syslog_identifier(service: &Service) -> String {
    format!("{}{}", crate::log::SESSION_IDENTIFIER_PREFIX, service.name)
}

/// A warm unit's properties: those of a session unit, but with the helper
/// as its program (the service's command as the helper's arguments) and
/// `control` as its standard input (and, inherited, output). The
/// connection's variables come with the hand-over.
pub(super) fn warm_properties(
    service: &Service,
    helper: &Path,
    control: std::os::fd::BorrowedFd<'_>,
) -> Result<Vec<(String, OwnedVariant)>, LaunchError> {
    let Some(command) = &service.command else {
        return Err(LaunchError::NoCommand);
    };
    let helper = helper.to_string_lossy().into_owned();
    let fd: OwnedFd = control.try_clone_to_owned().map_err(LaunchError::Socket)?;
    let environment: Vec<String> = std::iter::once(format!("TCPMUX_SERVICE={}", service.name))
        .chain(service.environment.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let argv: Vec<String> = std::iter::once(helper.clone())
        .chain(command.iter().cloned())
        .collect();
    let mut props = vec![
        (
            "Description".to_string(),
            value(format!("TCPMUX service {} (warm unit)", service.name))?,
        ),
        ("Type".into(), value("exec")?),
        ("CollectMode".into(), value("inactive-or-failed")?),
        ("StandardInputFileDescriptor".into(), value(Fd::from(fd))?),
        ("StandardError".into(), value("journal")?),
        // The program's lines are the service's, not the helper's.
        (
            "SyslogIdentifier".into(),
            value(syslog_identifier(service))?,
        ),
        ("Environment".into(), value(environment)?),
        ("ExecStart".into(), exec_start(&helper, &argv)?),
    ];
    credentials(service.credentials.as_ref(), &mut props)?;
    resources(service.umask, &service.limits, &mut props)?;
    Ok(props)
}

/// The unit's properties, as `StartTransientUnit` takes them.
pub(super) fn properties(
    service: &Service,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    socket: std::os::fd::BorrowedFd<'_>,
    version: u32,
) -> Result<Vec<(String, OwnedVariant)>, LaunchError> {
    let fd = || -> Result<Fd<'static>, LaunchError> {
        let dup: OwnedFd = socket.try_clone_to_owned().map_err(LaunchError::Socket)?;
        Ok(Fd::from(dup))
    };
    let environment: Vec<String> = session_environment(service, peer, local)
        .into_iter()
        .chain(
            service
                .environment
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        )
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut props = vec![
        (
            "Description".to_string(),
            value(format!("TCPMUX service {} for {peer}", service.name))?,
        ),
        ("Type".into(), value("exec")?),
        ("CollectMode".into(), value("inactive-or-failed")?),
        ("StandardInputFileDescriptor".into(), value(fd()?)?),
        ("StandardOutputFileDescriptor".into(), value(fd()?)?),
        // The descriptor above is what the program gets as standard output
        // whatever StandardOutput= says; but systemd gives standard error a
        // copy of standard output whenever both *settings* are the same,
        // and StandardOutput= left alone is the manager's default,
        // journal. `null` makes them differ, so that standard error really
        // is the journal and never the client's connection.
        ("StandardOutput".into(), value("null")?),
        ("StandardError".into(), value("journal")?),
        (
            "SyslogIdentifier".into(),
            value(syslog_identifier(service))?,
        ),
        ("Environment".into(), value(environment)?),
    ];
    if let Some(command) = &service.command {
        props.push(("ExecStart".into(), exec_start(&command[0], command)?));
    }
    credentials(service.credentials.as_ref(), &mut props)?;
    resources(service.umask, &service.limits, &mut props)?;
    if version >= EXTRA_FDS_MIN_VERSION {
        let extra: Vec<(Fd<'static>, String)> = vec![(fd()?, CONNECTION_FD_NAME.to_string())];
        props.push(("ExtraFileDescriptors".into(), value(extra)?));
    }
    Ok(props)
}
