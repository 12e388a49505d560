//! weft-bench: measures weft against its peers, side by side, interleaved,
//! on simulated hosts built by the test bed (the root namespace is never
//! touched).
//!
//! `weft-bench attach`: time to create-and-attach a namespace (and to delete
//! it) with `weftctl ns add` vs the CNI reference plugins (`bridge` with
//! `host-local` IPAM, Debian `containernetworking-plugins`) vs netavark
//! (podman's network backend), each creating the namespace itself, at
//! several counts of existing endpoints.
//!
//! `weft-bench cni`: a container's namespace attached (and detached) by
//! `weft-cni` vs the reference chain `bridge` + `host-local` (+ `portmap`
//! with a published port), both exec'd as a container runtime does, at
//! several counts of existing attachments (`tests/src/bench/cni.rs`).
//!
//! `weft-bench scale` (alias `register`): K in-process agents registering at
//! once with one or more controllers, then the fan-out of host changes to
//! all of them (`tests/src/bench/scale/`).
//!
//! `weft-bench converge`: time until every agent has programmed a host that
//! joins, or is removed (`tests/src/bench/converge.rs`).
//!
//! `weft-bench peers`: one agent programming P peers from cold, and its
//! memory (`tests/src/bench/peers.rs`).
//!
//! `weft-bench dataplane`: TCP throughput and RTT across hosts: underlay vs
//! VXLAN vs direct routing (`tests/src/bench/dataplane/`).
//!
//! `weft-bench churn`: 10,000 ns add/del and peer add/remove cycles;
//! memory, fds and kernel objects throughout (`tests/src/bench/churn/`).
//!
//! `weft-bench all --quick`: every one of them as a smoke run.
//!
//! `weft-bench report`: Markdown tables and SVG plots from the raw samples
//! (`tests/src/bench/report/`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[path = "../bench/mod.rs"]
mod bench;

use bench::{attach, churn, cni, converge, dataplane, peers, report, scale};

#[derive(Parser)]
#[command(
    name = "weft-bench",
    version,
    about = "Measure weft against its peers, side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Namespace create-and-attach (and delete): weftctl ns add vs CNI bridge+host-local vs netavark.
    Attach {
        /// Existing endpoints at which to measure (ascending).
        #[arg(long, value_delimiter = ',', default_value = "1,100,300,1000")]
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
    /// CNI ADD and DEL as a runtime execs them: weft-cni vs bridge+host-local
    /// (+portmap), without and with one published port.
    Cni {
        /// Existing attachments at which to measure (ascending, at most 1020).
        #[arg(long, value_delimiter = ',', default_value = "1,300,1000")]
        counts: Vec<usize>,
        /// Measurements per side, variant and count.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Pause before each pair of ADDs, so the kernel's asynchronous
        /// cleanup of the namespaces just deleted does not land on the next
        /// measurement.
        #[arg(long, default_value_t = 100)]
        settle_ms: u64,
        /// A smoke run: counts 1,10 and 5 samples.
        #[arg(long)]
        quick: bool,
    },
    /// Control-plane scale: K in-process agents (real QUIC, real
    /// certificates, no kernel work) register at once with the controllers,
    /// then the fan-out of host changes to all of them; controller RSS/CPU
    /// and etcd writes per phase.
    #[command(alias = "register")]
    Scale {
        /// Numbers of agents, one run each (a fresh cluster per run).
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        agents: Vec<usize>,
        /// Numbers of controllers, one run each per agent count.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        controllers: Vec<usize>,
        /// Host changes (a join, then a removal) whose fan-out is timed.
        #[arg(long, default_value_t = 10)]
        changes: usize,
        /// Where the raw samples (JSON) go.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// A smoke run: 50 agents, 1 and 2 controllers, 3 changes.
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
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000")]
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
    /// Churn: many ns add/del cycles and peer add/remove cycles; RSS, fds
    /// and kernel objects sampled throughout (no leftovers allowed).
    Churn {
        #[arg(long, default_value_t = 10_000)]
        ns_cycles: usize,
        #[arg(long, default_value_t = 10_000)]
        peer_cycles: usize,
        /// Sample every this many cycles.
        #[arg(long, default_value_t = 500)]
        every: usize,
        /// Peers added (then removed) together.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Where the raw samples (JSON) go, if anywhere.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A smoke run: 200 + 200 cycles, sampled every 20.
        #[arg(long)]
        quick: bool,
    },
    /// Markdown tables and SVG plots from the raw samples (`OUT/*.json`);
    /// the plots go next to them (`OUT/<figure>.svg`).
    Report {
        /// Where the raw samples (JSON) are.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Replace the report section of this Markdown file (between the
        /// `<!-- weft-bench report: begin/end -->` markers, appended if
        /// absent) instead of printing it.
        #[arg(long)]
        write: Option<PathBuf>,
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
        Cmd::Churn {
            ns_cycles,
            peer_cycles,
            every,
            in_flight,
            out,
            quick,
        } => {
            let (n, p, every) = if quick {
                (200, 200, 20)
            } else {
                (ns_cycles, peer_cycles, every)
            };
            churn::run(n, p, every, in_flight, out.as_deref())
        }
        Cmd::All { out, quick } => {
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (vec![1, 100, 300, 1000], 25)
            };
            attach::run(&counts, samples, Duration::from_millis(100), &out)?;
            println!();
            let (counts, samples) = if quick {
                (vec![1, 10], 5)
            } else {
                (vec![1, 300, 1000], 20)
            };
            cni::run(&counts, samples, Duration::from_millis(100), &out)?;
            println!();
            if quick {
                scale::run(&[50], &[1, 2], 3, &out)?;
            } else {
                scale::run(&[1000, 5000], &[1, 2], 10, &out)?;
            }
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
                peers::run(&[100, 1000, 5000, 10_000], 3, Some(&out))?;
            }
            println!();
            if quick {
                churn::run(200, 200, 20, 4, Some(&out))?;
            } else {
                churn::run(10_000, 10_000, 500, 4, Some(&out))?;
            }
            println!();
            if quick {
                dataplane::run(1, 1, Some(&out))?;
            } else {
                dataplane::run(5, 5, Some(&out))?;
            }
            // Checks that every figure's samples can be reported (the
            // Markdown goes to stdout after the tables).
            println!();
            report::run(&out, None)
        }
        Cmd::Scale {
            agents,
            controllers,
            changes,
            out,
            quick,
        } => {
            let (agents, controllers, changes) = if quick {
                (vec![50], vec![1, 2], 3)
            } else {
                (agents, controllers, changes)
            };
            scale::run(&agents, &controllers, changes, &out)
        }
        Cmd::Report { out, write } => report::run(&out, write.as_deref()),
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
        Cmd::Cni {
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
            cni::run(&counts, samples, Duration::from_millis(settle_ms), &out)
        }
    }
}
