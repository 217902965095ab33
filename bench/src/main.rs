//! tcpmux-bench: the client side of the loopback benchmark.
//!
//! Every measuring subcommand prints one tab-separated record per figure on
//! stdout (see [`record`]); `report` turns a file of such records, from
//! several rounds and servers, into the comparison table.

mod args;
mod bulk;
mod load;
mod memory;
mod ops;
mod record;
mod report;
mod slowloris;
mod soak;

use args::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  tcpmux-bench help ADDR [--concurrency N] [--seconds S] [--label NAME] [--once]
      HELP handshakes: connect, HELP, read to EOF, close
  tcpmux-bench dispatch ADDR SERVICE [--concurrency N] [--seconds S] [--label NAME] [--once]
      plus-mode dispatch to an echoing service: name, '+', one line echoed,
      then our end of input and the service's exit (EOF), then close
  tcpmux-bench greet ADDR SERVICE [--concurrency N] [--seconds S] [--label NAME] [--once]
      name a service that answers one line and closes: '+', the line, EOF
  tcpmux-bench first-byte ADDR SERVICE [--concurrency N | --rate R | --burst N] [--seconds S] [--label NAME] [--once]
      name a service that writes first (as /bin/echo does): the latency is
      the time from connect to its first byte after '+'; --rate R starts R
      sessions a second (open loop) instead of N clients in a closed loop;
      --burst N starts N sessions at the same moment, once
  tcpmux-bench echo ADDR [SERVICE] [--concurrency N] [--seconds S] [--label NAME] [--once]
      one line echoed through a forwarder: as dispatch when SERVICE is given
      (name, '+'), else from the first byte (sslh, HAProxy), then EOF, close
  help, dispatch, greet and echo also take --pid PID [--backend-pid PID]: then
      the CPU microseconds per operation of this client, of PID (the server)
      and of the backend are recorded too (test NAME-cpu, the note says whose)
  tcpmux-bench bulk ADDR [SERVICE] [--mib M] [--pairs P] [--pid PID] [--label NAME]
      P connections at once (default 1), each sending M MiB (default 1024) to
      an echoing backend while reading them back and checking them; records
      MiB/s each way and, with --pid, PID's CPU ms per GiB relayed
  tcpmux-bench msp ADDR --file FILE [--concurrency N] [--seconds S] [--label NAME] [--once]
      MSP version B over UDP, retransmitted until acknowledged; FILE is where
      the server's delivery command appends the text, read back to count
      messages lost or delivered twice
  tcpmux-bench memory ADDR --pid PID [--count N] [--label NAME]
      RSS of PID (and its descendants) idle, then with N silent connections
  tcpmux-bench slowloris ADDR [--count N] [--sources N] [--samples N] [--label NAME]
      N silent connections from --sources addresses (127.1.0.x) held open
      while HELP is asked from 127.2.0.1, one at a time: its latency
  tcpmux-bench soak ADDR MSP_ADDR --pid PID --file FILE [--minutes M] [--rate R]
                    [--sources N] [--service NAME]
      a steady mix (HELP, echo sessions, long sessions, unknown names,
      silent clients, MSP over UDP and TCP) of R operations a second
      (default 250) from 127.77.0.1 to 127.77.0.N (default 16) for M minutes
      (default 30), a SIGHUP to PID every 10 s; samples PID's RSS,
      descriptors and children every 10 s and prints a verdict (exit 1 on
      FAIL): no error, every MSP message in FILE once, RSS of the last
      minute within 5 % or 1 MiB of minute 8's (of the middle one in runs
      under 16 minutes), descriptors and children back to idle within 3 s
  tcpmux-bench free ADDR...        fail unless every TCP and UDP ADDR can be bound
  tcpmux-bench wait ADDR [--udp] [--seconds S]
      wait until something listens on ADDR
  tcpmux-bench report FILE [--quick]
      the table of a file of records, as Markdown; --quick: only tcpmuxd's
      rates as ratios to the floor (and to tcpmuxd-before), with the lowest
      and highest ratio of a round

Clients close with SO_LINGER 0 (a reset, no TIME_WAIT), so long runs do not
run out of ephemeral ports.";

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    let result = match args.command.as_str() {
        "help" | "dispatch" | "echo" | "greet" | "first-byte" | "msp" => measure(&args),
        "bulk" => bulk_cmd(&args),
        "memory" => memory_cmd(&args),
        "slowloris" => slowloris_cmd(&args),
        "soak" => soak_cmd(&args),
        "free" => free_cmd(&args),
        "wait" => wait_cmd(&args),
        "report" => report_cmd(&args),
        "" => return usage_error("no subcommand"),
        other => return usage_error(&format!("unknown subcommand {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpmux-bench {}: {e}", args.command);
            ExitCode::FAILURE
        }
    }
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("tcpmux-bench: {e}\n{USAGE}");
    ExitCode::from(2)
}

fn addr(args: &Args, index: usize) -> Result<SocketAddr, String> {
    let text = args.positional(index, "ADDR")?;
    text.parse()
        .map_err(|e| format!("{text}: not an address and port: {e}"))
}

/// Largest `--burst`: clients started at the same moment, once.
const MAX_BURST: usize = 1024;

/// Highest `--rate`: each paced session is a task of its own, and a typo
/// must not open a million connections a second.
const MAX_RATE: f64 = 1000.0;

fn measure(args: &Args) -> Result<(), String> {
    let target = addr(args, 0)?;
    let concurrency: usize = args.number("concurrency", 1)?;
    let seconds: f64 = args.number("seconds", 3.0)?;
    let label = args.value("label").unwrap_or("server").to_string();
    let op = match args.command.as_str() {
        "help" => ops::Op::Help,
        "dispatch" => ops::Op::Dispatch {
            service: args.positional(1, "SERVICE")?.to_string(),
        },
        "echo" => ops::Op::Echo {
            service: args.positional(1, "SERVICE").ok().map(str::to_string),
        },
        "greet" => ops::Op::Greet {
            service: args.positional(1, "SERVICE")?.to_string(),
        },
        "first-byte" => ops::Op::FirstByte {
            service: args.positional(1, "SERVICE")?.to_string(),
        },
        _ => ops::Op::Msp {
            run: ops::run_nonce(),
        },
    };
    if args.flag("once") {
        // A probe before measuring: one operation, its error in full.
        return load::once(target, &op);
    }
    if concurrency == 0 || seconds.is_nan() || seconds <= 0.0 {
        return Err("--concurrency and --seconds must be positive".into());
    }
    if let Some(n) = args.value("burst") {
        let n: usize = n
            .parse()
            .map_err(|_| format!("--burst {n}: not a whole number"))?;
        if n == 0 || n > MAX_BURST {
            return Err(format!("--burst must be 1 to {MAX_BURST}"));
        }
        let summary = load::burst(target, &op, n);
        let note = summary.error_note();
        let test = format!("{}-burst", args.command);
        summary.record(&test, n, &label, note).print();
        return Ok(());
    }
    if let Some(rate) = args.value("rate") {
        let rate: f64 = rate
            .parse()
            .map_err(|_| format!("--rate {rate}: not a number"))?;
        if !(rate > 0.0 && rate <= MAX_RATE) {
            return Err(format!("--rate must be more than 0 and at most {MAX_RATE}"));
        }
        let summary = load::paced(target, &op, rate, Duration::from_secs_f64(seconds));
        let note = summary.error_note();
        // Recorded with the rate as its "concurrency": the table's column.
        let test = format!("{}-paced", args.command);
        summary
            .record(&test, rate.round() as usize, &label, note)
            .print();
        return Ok(());
    }
    // Whose CPU to count per operation: this client's own, and with
    // --pid and --backend-pid the server's and the daemon behind it.
    let mut watched = vec![("client", std::process::id())];
    for (who, flag) in [("server", "pid"), ("backend", "backend-pid")] {
        match args.number(flag, 0u32)? {
            0 => {}
            pid => watched.push((who, pid)),
        }
    }
    let cpu_before = watched
        .iter()
        .map(|&(_, pid)| bulk::cpu_seconds(pid))
        .collect::<Result<Vec<_>, _>>()?;
    let summary = load::run(target, &op, concurrency, Duration::from_secs_f64(seconds));
    if watched.len() > 1 {
        for (&(who, pid), before) in watched.iter().zip(cpu_before) {
            let used = bulk::cpu_seconds(pid)? - before;
            record::Record {
                test: format!("{}-cpu", args.command),
                concurrency,
                server: label.clone(),
                value: 1e6 * used / summary.ok.max(1) as f64,
                p50_us: 0.0,
                p99_us: 0.0,
                errors: 0,
                note: who.to_string(),
            }
            .print();
        }
    }
    let mut note = summary.error_note();
    if let ops::Op::Msp { run } = &op {
        let file = args.required("file")?;
        let check = ops::verify_deliveries(file, run, &summary.acked)?;
        note = join_notes(&[check.describe(summary.retries), note]);
        record::Record {
            errors: summary.errors + check.lost + check.duplicated,
            ..summary.record(&args.command, concurrency, &label, note)
        }
        .print();
    } else {
        summary
            .record(&args.command, concurrency, &label, note)
            .print();
    }
    Ok(())
}

fn join_notes(notes: &[String]) -> String {
    notes
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("; ")
}

fn bulk_cmd(args: &Args) -> Result<(), String> {
    let target = addr(args, 0)?;
    let service = args.positional(1, "SERVICE").ok();
    let mib: u64 = args.number("mib", 1024)?;
    let pairs: usize = args.number("pairs", 1)?;
    if mib == 0 || pairs == 0 || pairs > MAX_BURST {
        return Err(format!(
            "--mib must be positive and --pairs 1 to {MAX_BURST}"
        ));
    }
    let pid = match args.number("pid", 0u32)? {
        0 => None,
        pid => Some(pid),
    };
    let label = args.value("label").unwrap_or("server");
    for r in bulk::run(target, service, mib * 1024 * 1024, pairs, pid, label)? {
        r.print();
    }
    Ok(())
}

fn memory_cmd(args: &Args) -> Result<(), String> {
    let target = addr(args, 0)?;
    let pid: u32 = args.number("pid", 0)?;
    if pid == 0 {
        return Err("--pid is required".into());
    }
    let count: usize = args.number("count", 5000)?;
    let label = args.value("label").unwrap_or("server");
    for r in memory::measure(target, pid, count, label)? {
        r.print();
    }
    Ok(())
}

fn slowloris_cmd(args: &Args) -> Result<(), String> {
    let target = addr(args, 0)?;
    let count: usize = args.number("count", 5000)?;
    let sources: usize = args.number("sources", 250)?;
    let samples: usize = args.number("samples", 200)?;
    let label = args.value("label").unwrap_or("server");
    for r in slowloris::measure(target, count, sources, samples, label)? {
        r.print();
    }
    Ok(())
}

fn soak_cmd(args: &Args) -> Result<(), String> {
    let settings = soak::Settings {
        tcpmux: addr(args, 0)?,
        msp: addr(args, 1)?,
        pid: match args.number("pid", 0u32)? {
            0 => return Err("--pid is required".into()),
            pid => pid,
        },
        minutes: args.number("minutes", 30)?,
        rate: args.number("rate", 250.0)?,
        sources: args.number("sources", 16)?,
        file: args.required("file")?.to_string(),
        service: args.value("service").unwrap_or("echo").to_string(),
    };
    // Long sessions and silent clients are held open by the hundred.
    memory::raise_nofile(65536);
    if soak::run(&settings)? {
        Ok(())
    } else {
        Err("verdict: FAIL".into())
    }
}

fn free_cmd(args: &Args) -> Result<(), String> {
    for i in 0..args.positional_count() {
        let a = addr(args, i)?;
        std::net::TcpListener::bind(a).map_err(|e| format!("TCP {a} is taken: {e}"))?;
        std::net::UdpSocket::bind(a).map_err(|e| format!("UDP {a} is taken: {e}"))?;
    }
    Ok(())
}

fn wait_cmd(args: &Args) -> Result<(), String> {
    let target = addr(args, 0)?;
    let seconds: f64 = args.number("seconds", 10.0)?;
    let udp = args.flag("udp");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        let up = if udp {
            memory::udp_bound(target)
        } else {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1))
                .map(|s| load::close_with_reset(&s))
                .is_ok()
        };
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let proto = if udp { "UDP" } else { "TCP" };
            return Err(format!(
                "nothing listens on {proto} {target} after {seconds} s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report_cmd(args: &Args) -> Result<(), String> {
    let path = args.positional(0, "FILE")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let records = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(record::Record::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if args.flag("quick") {
        print!("{}", report::quick_table(&records));
    } else {
        print!("{}", report::table(&records));
    }
    Ok(())
}
