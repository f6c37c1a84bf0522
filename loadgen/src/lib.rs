//! corecast-loadgen: a Socket.IO load generator for corecast and for any server with the
//! same events (the Node.js baseline in `bench/baseline`).
//!
//! It owns the client side of the benchmark: set-up through the admin API, connections
//! (spread over event-loop threads, and over processes past one process's file limit),
//! an open-loop send schedule, and the accounting of every expected delivery. Latency is
//! measured at each receiving member against the *intended* send time carried in the
//! message text, so a stalled server or loadgen shows up as latency instead of as fewer
//! samples (no coordinated omission).
//!
//! It never decides pass or fail on speed: it reports; `bench/compare.sh` compares. It
//! speaks the wire only through `corecast-wire`, the codec the gateway uses, on either of
//! Engine.IO's transports (`--transport websocket|polling`; the HTTP of long-polling is
//! [`polling`]'s).

pub mod admin;
pub mod breakdown;
pub mod config;
pub mod polling;
pub mod report;
pub mod stats;
pub mod svg;
pub mod worker;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::{Config, Scenario};
use crate::report::{Report, ServerSample};
use crate::stats::{ConnectRound, Merged, RawReport, Second};
use crate::worker::{Cmd, Event, Worker};

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on the machine, so a
/// send time written by one loadgen process can be read by another.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's CPU time (user + system), and its waited-for children's, in seconds.
pub fn cpu_seconds(who: libc::c_int) -> f64 {
    let (user, sys) = cpu_split(who);
    user + sys
}

/// (user, system) CPU seconds of this process (`RUSAGE_SELF`) or its children.
pub fn cpu_split(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Runs the scenario and writes the reports. Child processes (`--procs`) write their raw
/// results to `--json` for the parent instead.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    if cfg.args.procs > 1 && !is_child() {
        return run_parent(cfg);
    }
    if !is_child() && !cfg.args.no_setup {
        let t = now_ns();
        admin::set_up(&cfg).context("setting up users and groups through the admin API")?;
        log(
            &cfg,
            &format!(
                "set up {} users and {} groups of {} in {:.1}s",
                cfg.args.conns,
                cfg.nr_groups,
                cfg.group_size,
                (now_ns() - t) as f64 / 1e9
            ),
        );
    }
    let mut server = ServerSample::new(cfg.args.server_pid);
    if !is_child() {
        server = server.with_metrics(cfg.args.admin, &cfg.args.admin_token);
    }
    server.mark("start");
    let (raw, secs) = run_local(&cfg, &mut server)?;
    if is_child() {
        let path = cfg.args.json.as_ref().context("a child needs --json")?;
        std::fs::write(path, serde_json::to_vec(&raw)?)?;
        return Ok(());
    }
    let mut merged = Merged::new();
    merged.add_raw(raw)?;
    finish(&cfg, merged, server, secs)
}

fn is_child() -> bool {
    std::env::var_os("CORECAST_LOADGEN_CHILD").is_some()
}

fn log(cfg: &Config, line: &str) {
    if !cfg.args.quiet {
        eprintln!("[{}] {line}", cfg.args.label);
    }
}

/// The event-loop threads of this process, driven through the phases of the scenario.
fn run_local(cfg: &Arc<Config>, server: &mut ServerSample) -> anyhow::Result<(RawReport, f64)> {
    let minter = Arc::new(admin::TokenMinter::new(&cfg.args.jwt_secret));
    let t0 = now_ns();
    let (ev_tx, ev_rx) = mpsc::channel();
    let mut cmds = Vec::new();
    let mut handles = Vec::new();
    for id in 0..cfg.nr_threads {
        let (tx, rx) = mpsc::channel();
        let w = Worker::new(id, cfg.clone(), minter.clone(), t0, ev_tx.clone())
            .context("creating an event loop")?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || w.run(rx))?,
        );
        cmds.push(tx);
    }
    drop(ev_tx);
    let broadcast = |c: &dyn Fn() -> Cmd| broadcast(&cmds, c);
    let mut pump = Pump::new(cfg.clone(), t0, ev_rx);

    // Connect rounds (connect-storm: a second round where everyone reconnects at once).
    let rounds = if cfg.args.scenario == Scenario::ConnectStorm {
        2
    } else {
        1
    };
    let mut connect_rounds = Vec::new();
    for round in 0..rounds {
        connect_rounds.push(connect_round(cfg, &cmds, &mut pump, round, now_ns())?);
    }

    // Children wait for the parent's go, which carries the common send start.
    let mut go_start = None;
    if is_child() {
        println!("CONNECTED");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        go_start = line
            .trim()
            .strip_prefix("GO ")
            .and_then(|s| s.parse::<u64>().ok());
    }

    // Settle, then the memory of idle authenticated connections.
    pump.run_until(now_ns() + 1_000_000_000);
    server.mark("connected");

    let mut loadgen_cpu = 0.0;
    let mut loadgen_user = 0.0;
    let mut send_wall = 0.0;
    let (mut storm_s, mut storm_live_s) = (0.0, 0.0);
    if cfg.args.scenario == Scenario::Idle {
        pump.run_until(now_ns() + cfg.duration.as_nanos() as u64);
        server.mark("end");
    } else if cfg.storm() {
        let (user0, sys0) = cpu_split(libc::RUSAGE_SELF);
        let start = now_ns() + 20_000_000;
        (storm_s, storm_live_s) =
            recovery_storm(cfg, &cmds, &mut pump, server, &mut connect_rounds, start)?;
        let (user1, sys1) = cpu_split(libc::RUSAGE_SELF);
        loadgen_cpu = (user1 - user0) + (sys1 - sys0);
        loadgen_user = user1 - user0;
        send_wall = (now_ns() - start) as f64 / 1e9;
    } else if cfg.sends() {
        let start = go_start.unwrap_or_else(|| now_ns() + 20_000_000);
        let measure = start + cfg.warmup.as_nanos() as u64;
        let end = measure + cfg.duration.as_nanos() as u64;
        let (user0, sys0) = cpu_split(libc::RUSAGE_SELF);
        server.mark("send_start");
        broadcast(&|| Cmd::Send {
            start_ns: start,
            measure_ns: measure,
            end_ns: end,
        });
        pump.run_until(end + cfg.drain.as_nanos() as u64);
        server.mark("send_end");
        let (user1, sys1) = cpu_split(libc::RUSAGE_SELF);
        loadgen_cpu = (user1 - user0) + (sys1 - sys0);
        loadgen_user = user1 - user0;
        send_wall = (now_ns() - start) as f64 / 1e9;
    }

    broadcast(&|| Cmd::Stop);
    let mut merged = Merged::new();
    let mut finals = 0;
    while finals < cfg.nr_threads {
        match pump.next(now_ns() + 10_000_000_000) {
            Some(Event::Final(f)) => {
                merged.add_thread(&f.stats);
                for (g, t) in &f.groups {
                    merged.add_group(*g, t);
                }
                finals += 1;
            }
            Some(_) => {}
            None if pump.closed => bail!("an event loop died before reporting"),
            None => {}
        }
    }
    for h in handles {
        let _ = h.join();
    }
    let timeline = pump.finish();
    let mut raw = merged.into_raw();
    raw.connect_rounds = connect_rounds;
    raw.timeline = timeline;
    raw.loadgen_cpu_s = loadgen_cpu;
    raw.loadgen_user_s = loadgen_user;
    raw.send_wall_s = send_wall;
    raw.storm_s = storm_s;
    // The measured window: a storm's live latency is measured from the reconnect round's
    // start until sending ended.
    let secs = if cfg.storm() {
        storm_live_s
    } else {
        cfg.duration.as_secs_f64()
    };
    Ok((raw, secs))
}

fn broadcast(cmds: &[mpsc::Sender<Cmd>], c: &dyn Fn() -> Cmd) {
    for tx in cmds {
        let _ = tx.send(c());
    }
}

/// One connect round on every thread, from `start`: until each has every connection ready
/// or failed.
fn connect_round(
    cfg: &Config,
    cmds: &[mpsc::Sender<Cmd>],
    pump: &mut Pump,
    round: usize,
    start: u64,
) -> anyhow::Result<ConnectRound> {
    broadcast(cmds, &|| Cmd::Connect {
        round,
        start_ns: start,
    });
    let mut cr = ConnectRound::default();
    let mut last = start;
    let mut done = 0;
    while done < cfg.nr_threads {
        match pump.next(now_ns() + 1_000_000_000) {
            Some(Event::RoundDone {
                attempted,
                ready,
                last_ready_ns,
            }) => {
                cr.attempted += attempted;
                cr.ready += ready;
                last = last.max(last_ready_ns);
                done += 1;
            }
            Some(_) => {}
            None if pump.closed => bail!("an event loop died during connect"),
            None => {}
        }
    }
    cr.seconds = (last - start) as f64 / 1e9;
    log(
        cfg,
        &format!(
            "connect round {round}: {}/{} ready in {:.2}s ({:.0}/s)",
            cr.ready,
            cr.attempted,
            cr.seconds,
            cr.ready as f64 / cr.seconds.max(1e-9)
        ),
    );
    Ok(cr)
}

/// Waits for one `want` event from every thread (bounded by `--connect-timeout`).
fn from_every_thread(
    cfg: &Config,
    pump: &mut Pump,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> anyhow::Result<()> {
    let deadline = now_ns() + cfg.connect_timeout.as_nanos() as u64 + 5_000_000_000;
    let mut done = 0;
    while done < cfg.nr_threads {
        match pump.next(deadline) {
            Some(ev) if want(&ev) => done += 1,
            Some(_) => {}
            None if pump.closed => bail!("an event loop died while waiting for {what}"),
            None if now_ns() >= deadline => bail!("timed out waiting for {what}"),
            None => {}
        }
    }
    Ok(())
}

/// `--scenario recovery-storm` after everyone connected: live traffic from `start`; after the
/// warm-up every client but the senders drops; `--missed` messages go into each group (all
/// acknowledged, so stored, before anyone comes back); everyone reconnects at once with pid
/// and offset; live traffic stops once every client has what it missed, plus the drain.
/// Returns the seconds from the reconnect round's start until the last client had all, and
/// until live sending ended.
fn recovery_storm(
    cfg: &Config,
    cmds: &[mpsc::Sender<Cmd>],
    pump: &mut Pump,
    server: &mut ServerSample,
    connect_rounds: &mut Vec<ConnectRound>,
    start: u64,
) -> anyhow::Result<(f64, f64)> {
    server.mark("send_start");
    broadcast(cmds, &|| Cmd::Send {
        start_ns: start,
        measure_ns: u64::MAX, // from the reconnect round on (the worker sets it)
        end_ns: u64::MAX,
    });
    pump.run_until(start + cfg.warmup.as_nanos() as u64);
    broadcast(cmds, &|| Cmd::Drop);
    from_every_thread(cfg, pump, "the drop", |e| matches!(e, Event::Dropped))?;
    let t = now_ns();
    let per_group = cfg.args.missed;
    broadcast(cmds, &|| Cmd::SendMissed { per_group });
    from_every_thread(cfg, pump, "the missed messages' acks", |e| {
        matches!(e, Event::MissedStored)
    })?;
    log(
        cfg,
        &format!(
            "dropped; {per_group} missed messages per group stored in {:.2}s",
            (now_ns() - t) as f64 / 1e9
        ),
    );
    server.mark("storm_start");
    let round_start = now_ns();
    connect_rounds.push(connect_round(cfg, cmds, pump, 1, round_start)?);
    let mut last_full = round_start;
    // The workers give up on missing messages at --connect-timeout after the round's start.
    let deadline = round_start + cfg.connect_timeout.as_nanos() as u64 + 5_000_000_000;
    while pump.recovered.len() < cfg.nr_threads {
        if pump.next(now_ns() + 50_000_000).is_none() && pump.closed {
            bail!("an event loop died during the recovery");
        }
        if now_ns() >= deadline {
            bail!("timed out waiting for the clients' recovery");
        }
    }
    for &at in &pump.recovered {
        last_full = last_full.max(at);
    }
    server.mark("storm_end");
    let storm_s = (last_full - round_start) as f64 / 1e9;
    log(
        cfg,
        &format!("every client had all it missed after {storm_s:.2}s"),
    );
    let end = now_ns();
    broadcast(cmds, &|| Cmd::EndSend { end_ns: end });
    pump.run_until(now_ns() + cfg.drain.as_nanos() as u64);
    server.mark("send_end");
    Ok((storm_s, (end - round_start) as f64 / 1e9))
}

/// Collects per-second intervals from the threads and prints the progress line.
struct Pump {
    cfg: Arc<Config>,
    t0: u64,
    rx: mpsc::Receiver<Event>,
    seconds: BTreeMap<u32, Second>,
    printed: u32,
    closed: bool,
    /// recovery-storm: each thread's `Recovered` (it may come during the connect round).
    recovered: Vec<u64>,
}

impl Pump {
    fn new(cfg: Arc<Config>, t0: u64, rx: mpsc::Receiver<Event>) -> Pump {
        Pump {
            cfg,
            t0,
            rx,
            seconds: BTreeMap::new(),
            printed: 0,
            closed: false,
            recovered: Vec::new(),
        }
    }

    /// The next non-interval event before `deadline_ns`, handling intervals meanwhile.
    fn next(&mut self, deadline_ns: u64) -> Option<Event> {
        loop {
            self.progress();
            let now = now_ns();
            if now >= deadline_ns {
                return None;
            }
            let wait = Duration::from_nanos((deadline_ns - now).min(100_000_000));
            match self.rx.recv_timeout(wait) {
                Ok(Event::Recovered { last_full_ns }) => self.recovered.push(last_full_ns),
                Ok(Event::Interval(iv)) => {
                    self.seconds
                        .entry(iv.sec)
                        .or_insert_with(|| Second::new(iv.sec))
                        .add(&iv);
                }
                Ok(ev) => return Some(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return None;
                }
            }
        }
    }

    fn run_until(&mut self, deadline_ns: u64) {
        while now_ns() < deadline_ns {
            if self.next(deadline_ns).is_none() && self.closed {
                return;
            }
        }
    }

    /// Prints each second once every thread has had 200 ms to report it.
    fn progress(&mut self) {
        let now_s = (now_ns().saturating_sub(self.t0 + 200_000_000)) / 1_000_000_000;
        while u64::from(self.printed) < now_s {
            let t = self.printed;
            self.printed += 1;
            if self.cfg.args.quiet {
                continue;
            }
            let Some(s) = self.seconds.get(&t) else {
                continue;
            };
            if s.sent == 0 && s.delivered == 0 && s.errors == 0 {
                continue;
            }
            eprintln!(
                "[{}] t={:>3}s sent/s={:>8} deliveries/s={:>9} p99={:>8.2}ms errors={}",
                self.cfg.args.label, t, s.sent, s.delivered, s.p99_ms, s.errors
            );
        }
    }

    fn finish(self) -> Vec<Second> {
        self.seconds.into_values().collect()
    }
}

/// `--procs N`: N children, each holding its share of the connections (users are dealt
/// round-robin), started together; the parent merges their raw reports.
fn run_parent(cfg: Arc<Config>) -> anyhow::Result<()> {
    if !cfg.args.no_setup {
        admin::set_up(&cfg).context("setting up users and groups through the admin API")?;
    }
    let mut server =
        ServerSample::new(cfg.args.server_pid).with_metrics(cfg.args.admin, &cfg.args.admin_token);
    server.mark("start");
    let dir = std::env::temp_dir().join(format!("corecast-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let base: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::new();
    for p in 0..cfg.args.procs {
        let out = dir.join(format!("child-{p}.json"));
        let mut child = Command::new(&exe)
            .args(&base)
            .args(["--proc-index", &p.to_string(), "--no-setup", "--quiet"])
            .arg("--json")
            .arg(&out)
            .env("CORECAST_LOADGEN_CHILD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a loadgen child")?;
        let stdout = BufReader::new(child.stdout.take().expect("invariant: piped"));
        children.push((child, stdout, out));
    }
    for (_, stdout, _) in &mut children {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "CONNECTED" {
            bail!("a loadgen child failed before connecting (see its error above)");
        }
    }
    log(&cfg, &format!("{} children connected", cfg.args.procs));
    std::thread::sleep(Duration::from_secs(1));
    server.mark("connected");
    let start = now_ns() + 1_500_000_000; // after the children's own settle second
    let send_start = now_ns();
    server.mark("send_start");
    for (child, _, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("invariant: piped");
        writeln!(stdin, "GO {start}")?;
    }
    let mut merged = Merged::new();
    for (mut child, _, out) in children {
        let status = child.wait()?;
        if !status.success() {
            bail!("a loadgen child exited with {status}");
        }
        let raw: RawReport = serde_json::from_slice(&std::fs::read(&out)?)
            .with_context(|| format!("reading {}", out.display()))?;
        merged.add_raw(raw)?;
    }
    server.mark(if cfg.args.scenario == Scenario::Idle {
        "end"
    } else {
        "send_end"
    });
    // The children's CPU is what the loadgen spent; the parent only waited.
    merged.raw.loadgen_cpu_s = merged.raw.loadgen_cpu_s.max(0.0);
    let _ = send_start;
    let _ = std::fs::remove_dir_all(&dir);
    finish(&cfg, merged, server, cfg.duration.as_secs_f64())
}

fn finish(cfg: &Config, merged: Merged, server: ServerSample, secs: f64) -> anyhow::Result<()> {
    let report = Report::build(cfg, &merged, &server, secs);
    println!("{}", report.table());
    if let Some(path) = &cfg.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cfg.args.svg {
        std::fs::write(path, svg::render(&report, &merged.latency))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
