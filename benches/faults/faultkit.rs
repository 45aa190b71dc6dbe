//! The fault bench's tool (benches/faults/run.sh runs it inside the bench's namespaces):
//! the impaired link and the sequence-numbered flows of `tandem::testkit`, as commands.
//!
//!   faultkit relay FRONT BACK [--loss P] [--duplicate P] [--reorder P] [--reorder-delay-ms N]
//!                             [--jitter-ms N] [--seed S]
//!       relays until its stdin ends; reads `set OPTIONS` and `stats` lines from it
//!   faultkit send TO TAG COUNT RATE [LEN]       paced datagrams; prints how many were sent
//!   faultkit flood TARGET RESPONDER_PUBLIC RATE SECONDS SOURCE...
//!       valid-mac1 handshake initiations for RESPONDER_PUBLIC at RATE per second for SECONDS,
//!       round robin from the SOURCE addresses; prints how many were sent
//!   faultkit recv BIND TAG COUNT [QUIET_MS] [LIMIT_S]
//!       prints `sent unique lost duplicates reordered`
//!
//! Built with `cargo build --release --example faultkit` (an example, not a binary of the
//! package, so `cargo install` never ships it).

use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use tandem::testkit::impair::{Direction, Impairment, Relay};
use tandem::testkit::seqflow::{SeqReceiver, send_sequence};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultkit: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, rest) = args.split_first().ok_or_else(usage)?;
    match cmd.as_str() {
        "relay" => relay(rest),
        "send" => send(rest),
        "recv" => recv(rest),
        "flood" => flood(rest),
        _ => Err(usage()),
    }
}

fn usage() -> String {
    "usage: faultkit relay FRONT BACK [--loss P] [--duplicate P] [--reorder P] \
     [--reorder-delay-ms N] [--jitter-ms N] [--seed S] | send TO TAG COUNT RATE [LEN] | \
     flood TARGET RESPONDER_PUBLIC RATE SECONDS SOURCE... | \
     recv BIND TAG COUNT [QUIET_MS] [LIMIT_S]"
        .to_owned()
}

fn parse<T: std::str::FromStr>(what: &str, s: Option<&String>) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|_| format!("bad {what}: {s:?}"))
}

/// `--loss P --duplicate P --reorder P --reorder-delay-ms N --jitter-ms N --seed S`.
fn impairment(args: &[String]) -> Result<(Impairment, u64), String> {
    let mut imp = Impairment::default();
    let mut seed = 1u64;
    let mut opts = args.iter();
    while let Some(flag) = opts.next() {
        let value = opts.next();
        match flag.as_str() {
            "--loss" => imp.loss = parse(flag, value)?,
            "--duplicate" => imp.duplicate = parse(flag, value)?,
            "--reorder" => imp.reorder = parse(flag, value)?,
            "--reorder-delay-ms" => {
                imp.reorder_delay = Duration::from_millis(parse(flag, value)?);
            }
            "--jitter-ms" => imp.jitter = Duration::from_millis(parse(flag, value)?),
            "--seed" => seed = parse(flag, value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok((imp, seed))
}

fn relay(args: &[String]) -> Result<(), String> {
    let front: SocketAddr = parse("FRONT", args.first())?;
    let back: SocketAddr = parse("BACK", args.get(1))?;
    let (imp, seed) = impairment(args.get(2..).unwrap_or_default())?;
    let relay = Relay::start(front, back, seed).map_err(|e| format!("relay: {e}"))?;
    relay.set_both(imp);
    eprintln!("faultkit: relaying {} -> {back}", relay.front());
    // Commands on stdin, one per line, until it ends (the bench holds a FIFO open):
    //   set [--loss P] [--duplicate P] ...   replaces both directions' impairment
    //   stats                                prints the counters (one line per direction)
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match words.split_first() {
            Some((cmd, rest)) if cmd == "set" => match impairment(rest) {
                Ok((imp, _)) => relay.set_both(imp),
                Err(e) => eprintln!("faultkit: {e}"),
            },
            Some((cmd, _)) if cmd == "stats" => print_stats(&relay),
            Some((cmd, _)) => eprintln!("faultkit: unknown relay command {cmd:?}"),
            None => {}
        }
    }
    print_stats(&relay);
    Ok(())
}

fn print_stats(relay: &Relay) {
    let s = relay.stats();
    for (name, dir) in [
        ("to_back", Direction::ToBack),
        ("to_front", Direction::ToFront),
    ] {
        println!(
            "{name} received={} sent={} dropped={} duplicated={} delayed={}",
            s.get(&s.received, dir),
            s.get(&s.sent, dir),
            s.get(&s.dropped, dir),
            s.get(&s.duplicated, dir),
            s.get(&s.delayed, dir),
        );
    }
    let _ = std::io::stdout().flush();
}

fn send(args: &[String]) -> Result<(), String> {
    let to: SocketAddr = parse("TO", args.first())?;
    let tag: u64 = parse("TAG", args.get(1))?;
    let count: u64 = parse("COUNT", args.get(2))?;
    let rate: u64 = parse("RATE", args.get(3))?;
    let len: usize = match args.get(4) {
        Some(_) => parse("LEN", args.get(4))?,
        None => 512,
    };
    let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    let sent = send_sequence(&sock, to, tag, count, rate, len).map_err(|e| format!("send: {e}"))?;
    println!("{sent}");
    Ok(())
}

fn flood(args: &[String]) -> Result<(), String> {
    let target: SocketAddr = parse("TARGET", args.first())?;
    let responder = tandem::proto::PublicKey::from_base64(args.get(1).ok_or_else(usage)?)
        .map_err(|e| format!("RESPONDER_PUBLIC: {e}"))?;
    let rate: u64 = parse("RATE", args.get(2))?;
    let seconds: u64 = parse("SECONDS", args.get(3))?;
    let sockets = args
        .get(4..)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let ip: std::net::IpAddr = parse("SOURCE", Some(a))?;
            let s =
                UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {a}: {e}"))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("nonblocking: {e}"))?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, String>>()?;
    if sockets.is_empty() {
        return Err("flood needs at least one SOURCE address".into());
    }
    let msgs = tandem::testkit::flood::messages(&responder);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent = tandem::testkit::flood::send(
        &sockets,
        target,
        &msgs,
        rate,
        Duration::from_secs(seconds),
        &stop,
    );
    println!("{sent}");
    Ok(())
}

fn recv(args: &[String]) -> Result<(), String> {
    let bind: SocketAddr = parse("BIND", args.first())?;
    let tag: u64 = parse("TAG", args.get(1))?;
    let count: u64 = parse("COUNT", args.get(2))?;
    let quiet: u64 = match args.get(3) {
        Some(_) => parse("QUIET_MS", args.get(3))?,
        None => 3000,
    };
    let limit: u64 = match args.get(4) {
        Some(_) => parse("LIMIT_S", args.get(4))?,
        None => 600,
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    let mut receiver = SeqReceiver::new(tag, count);
    let d = receiver.receive(
        &sock,
        Duration::from_millis(quiet),
        Duration::from_secs(limit),
    );
    println!(
        "{} {} {} {} {}",
        d.sent,
        d.unique,
        d.lost(),
        d.duplicates,
        d.reordered
    );
    Ok(())
}
