//! weft-bench: measures weft against its peers, side by side, interleaved,
//! on simulated hosts built by the test bed (the root namespace is never
//! touched).
//!
//! `weft-bench attach`: time to create-and-attach a namespace (and to delete
//! it) with `weftctl ns add` vs the CNI reference plugins (`bridge` with
//! `host-local` IPAM, Debian `containernetworking-plugins`), each creating
//! the namespace itself, at several counts of existing endpoints.
//!
//! `weft-bench register`: N in-process agents registering at once.
//!
//! `weft-bench converge`: time until every agent has programmed a host that
//! joins, or is removed (`tests/src/bench/converge.rs`).
//!
//! `weft-bench peers`: one agent programming P peers from cold, and its
//! memory (`tests/src/bench/peers.rs`).
//!
//! `weft-bench dataplane`: TCP throughput and RTT across hosts: underlay vs
//! VXLAN vs direct routing (`tests/src/bench/dataplane.rs`).
//!
//! `weft-bench all --quick`: every one of them as a smoke run.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[path = "../bench/attach.rs"]
mod attach;
#[path = "../bench/common.rs"]
mod common;
#[path = "../bench/converge.rs"]
mod converge;
#[path = "../bench/dataplane.rs"]
mod dataplane;
#[path = "../bench/peers.rs"]
mod peers;
#[path = "../bench/register.rs"]
mod register;

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "Measure weft against its peers, side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Namespace create-and-attach (and delete): weftctl ns add vs CNI bridge+host-local.
    Attach {
        /// Existing endpoints at which to measure (ascending).
        #[arg(long, value_delimiter = ',', default_value = "1,100,300")]
        counts: Vec<usize>,
        /// Measurements per tool and count.
        #[arg(long, default_value_t = 25)]
        samples: usize,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Pause between samples, so the kernel's asynchronous cleanup of the
        /// namespaces just deleted does not land on the next measurement.
        #[arg(long, default_value_t = 100)]
        settle_ms: u64,
        /// A smoke run: counts 1,10 and 5 samples.
        #[arg(long)]
        quick: bool,
    },
    /// Registration: N in-process agents (real QUIC, real certificates, no
    /// kernel work) register at once through one controller backed by etcd.
    Register {
        /// Numbers of agents, one run each (a fresh cluster per run).
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        agents: Vec<usize>,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// A smoke run: 20 agents.
        #[arg(long)]
        quick: bool,
    },
    /// Convergence: a host joins (fresh) or is removed; time until every
    /// other agent has programmed it.
    Converge {
        /// Hosts in the lab; the last one joins and leaves.
        #[arg(long, default_value_t = 10)]
        hosts: usize,
        /// Join/removal rounds.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 4 hosts, 3 rounds.
        #[arg(long)]
        quick: bool,
    },
    /// Scale of one agent: programming P peers from cold, and its RSS.
    Peers {
        /// Numbers of peers, each measured on a fresh lab.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        peers: Vec<usize>,
        /// Samples per count (counts interleaved).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 100 and 500 peers, 1 round.
        #[arg(long)]
        quick: bool,
    },
    /// Data plane: TCP throughput (iperf3) and ping RTT, underlay vs VXLAN
    /// vs direct routing, interleaved.
    Dataplane {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Length of each iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 1 round of 1 s.
        #[arg(long)]
        quick: bool,
    },
    /// Every benchmark in turn (with --quick: each one's smoke run).
    All {
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Converge {
            hosts,
            rounds,
            out,
            quick,
        } => {
            let (hosts, rounds) = if quick { (4, 3) } else { (hosts, rounds) };
            converge::run(hosts, rounds, out.as_deref())
        }
        Cmd::Peers {
            peers: counts,
            rounds,
            out,
            quick,
        } => {
            let (counts, rounds) = if quick {
                (vec![100, 500], 1)
            } else {
                (counts, rounds)
            };
            peers::run(&counts, rounds, out.as_deref())
        }
        Cmd::Dataplane {
            rounds,
            seconds,
            out,
            quick,
        } => {
            let (rounds, seconds) = if quick { (1, 1) } else { (rounds, seconds) };
            dataplane::run(rounds, seconds, out.as_deref())
        }
        Cmd::All { out, quick } => {
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (vec![1, 100, 300], 25)
            };
            attach::run(&counts, samples, Duration::from_millis(100), &out)?;
            println!();
            register::run(if quick { &[20] } else { &[100, 1000] }, &out)?;
            println!();
            if quick {
                converge::run(4, 3, Some(&out))?;
            } else {
                converge::run(10, 20, Some(&out))?;
            }
            println!();
            if quick {
                peers::run(&[100, 500], 1, Some(&out))?;
            } else {
                peers::run(&[100, 1000, 5000], 3, Some(&out))?;
            }
            println!();
            if quick {
                dataplane::run(1, 1, Some(&out))
            } else {
                dataplane::run(5, 5, Some(&out))
            }
        }
        Cmd::Register { agents, out, quick } => {
            let agents = if quick { vec![20] } else { agents };
            register::run(&agents, &out)
        }
        Cmd::Attach {
            counts,
            samples,
            out,
            settle_ms,
            quick,
        } => {
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (counts, samples)
            };
            attach::run(&counts, samples, Duration::from_millis(settle_ms), &out)
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.99), s[0], s[s.len() - 1])
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("weft-bench {}", args.join(" "))
}
