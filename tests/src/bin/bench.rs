//! The benchmark suite: `cargo run --release -p mirrord-tests --bin bench -- [OPTIONS]` (or
//! `./scripts/bench [OPTIONS]`, which installs what is missing first). Needs root.
//!
//! Builds a simulated cluster, measures mirrord against the direct path (and socat and
//! proxychains as the usual alternatives), interleaving the variants run by run, prints a
//! Markdown table and writes `bench-results/latest.{json,md}`. See `mirrord_tests::bench`.
//!
//! Options:
//!   --quick                  small counts and 2 runs (to try the bench out)
//!   --runs N                 number of runs (default 5, quick 2)
//!   --only S[,S...]          sections: outgoing, incoming, session, layer, go, kubernetes
//!                            (default all; kubernetes runs last, on the simulated
//!                            Kubernetes API)
//!   --shared                 say in the output that the machine ran other work meanwhile
//!   --write-benchmarks-md    replace the results section of BENCHMARKS.md with this run's
//!                            (`--only kubernetes`: the Kubernetes section's results only)
//!   --no-build               do not run `cargo build` for the programs under test first
//!   --out DIR                where latest.json / latest.md go (default bench-results/)
//!   --hold-cluster SECS      (for profiling) set everything up, print the namespaces, pod pid
//!                            and relay ports, keep them SECS seconds (at most 3600), measure
//!                            nothing

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mirrord_tests::bench::kube::KubeBench;
use mirrord_tests::bench::report::{self, Status};
use mirrord_tests::bench::run::{self, Bench, Bins, Params, SECTIONS};
use mirrord_tests::bench::{
    command_output, loadavg, update_benchmarks_md, Machine, KUBE_MARKERS, RESULTS_MARKERS,
};
use mirrord_tests::Cluster;
use serde_json::json;

struct Args {
    quick: bool,
    runs: Option<usize>,
    only: Vec<String>,
    shared: bool,
    write_doc: bool,
    build: bool,
    out: PathBuf,
    hold: Option<u64>,
    argv: Vec<String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn parse_args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        quick: false,
        runs: None,
        only: Vec::new(),
        shared: false,
        write_doc: false,
        build: true,
        out: workspace().join("bench-results"),
        hold: None,
        argv: argv.clone(),
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--runs" => {
                let n: usize = it.next().context("--runs N")?.parse()?;
                if !(1..=50).contains(&n) {
                    bail!("--runs must be 1..=50");
                }
                a.runs = Some(n);
            }
            "--only" => {
                for s in it.next().context("--only SECTIONS")?.split(',') {
                    if !SECTIONS.contains(&s) {
                        bail!("unknown section {s:?} (sections: {})", SECTIONS.join(", "));
                    }
                    a.only.push(s.to_owned());
                }
            }
            "--shared" => a.shared = true,
            "--write-benchmarks-md" => a.write_doc = true,
            "--no-build" => a.build = false,
            "--hold-cluster" => {
                let secs: u64 = it.next().context("--hold-cluster SECS")?.parse()?;
                a.hold = Some(secs.min(3600));
            }
            "--out" => a.out = PathBuf::from(it.next().context("--out DIR")?),
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--runs N] [--only {}] [--shared] \
                     [--write-benchmarks-md] [--no-build] [--out DIR]",
                    SECTIONS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (see --help)"),
        }
    }
    Ok(a)
}

/// Installs the relays and proxies of the comparison when missing (Debian packages).
fn ensure_packages() -> Result<()> {
    let have = |p: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
            .any(|d| d.join(p).is_file())
    };
    let missing: Vec<&str> = [
        ("socat", "socat"),
        ("proxychains4", "proxychains4"),
        ("microsocks", "microsocks"),
        ("iptables-save", "iptables"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("go", "golang-go"),
    ]
    .into_iter()
    .filter(|(prog, _)| !have(prog))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", missing.join(" "));
    let ok = |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status();
    if !ok(Command::new("apt-get").args(["update", "-qq"]))?.success()
        || !ok(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing))?
        .success()
    {
        bail!(
            "could not install {}: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Builds the programs under test with the profile this binary was built with.
fn build(target_dir: &Path, release: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--workspace")
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace());
    if release {
        cmd.arg("--release");
    }
    eprintln!("bench: {cmd:?}");
    if !cmd.status().context("running cargo build")?.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// Builds `tests/programs/benchclient.go` statically into `bin_dir` (standard library only: the
/// module proxy is never asked).
fn build_go_client(bin_dir: &Path) -> Result<PathBuf> {
    let out = bin_dir.join("bench_client_go");
    let status = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg(workspace().join("tests/programs/benchclient.go"))
        .env("CGO_ENABLED", "0")
        .env("GOPROXY", "off")
        .env("GOCACHE", bin_dir.join("gocache"))
        .env("GOPATH", bin_dir.join("gopath"))
        .status()
        .context("running go build (golang-go)")?;
    if !status.success() {
        bail!("go build of the Go client failed");
    }
    Ok(out)
}

/// Keeps what was set up for `secs` seconds or until Ctrl-C.
fn hold(secs: u64) {
    let until = Instant::now() + std::time::Duration::from_secs(secs);
    while Instant::now() < until && !run::interrupted() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = parse_args()?;
    let t0 = Instant::now();
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?.to_path_buf();
    let profile = bin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if profile != "release" {
        eprintln!("bench: WARNING: a {profile} build; figures of a release build need --release");
    }
    ensure_packages()?;
    if args.build {
        build(
            bin_dir.parent().context("target dir")?,
            profile == "release",
        )?;
    }
    let go_client = if args.only.is_empty() || args.only.iter().any(|s| s == "go") {
        Some(build_go_client(&bin_dir)?)
    } else {
        None
    };
    let bins = Bins {
        mirrord: bin_dir.join("mirrord"),
        server: bin_dir.join("mirrord-server"),
        client: bin_dir.join("bench_client"),
        go_client,
    };
    for p in [
        &bins.mirrord,
        &bins.server,
        &bins.client,
        &bin_dir.join("mirrord-agent"),
        &bin_dir.join("libmirrord_layer.so"),
    ] {
        if !p.exists() {
            bail!("{} is missing: cargo build --workspace first", p.display());
        }
    }
    let runs = args.runs.unwrap_or(if args.quick { 2 } else { 5 });
    let params = if args.quick {
        Params::quick(runs)
    } else {
        Params::full(runs)
    };
    let sections: Vec<&str> = if args.only.is_empty() {
        SECTIONS.to_vec()
    } else {
        SECTIONS
            .iter()
            .copied()
            .filter(|s| args.only.iter().any(|o| o == s))
            .collect()
    };
    let machine = Machine::probe();
    let commit = command_output(
        "git",
        &[
            "-C",
            &workspace().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_output(
        "git",
        &[
            "-C",
            &workspace().to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    run::install_interrupt_handler();

    let mut figs = run::figures(&params, &sections);
    let measured_from = Instant::now();
    // The sections of the network-namespace cluster first, all runs; then the Kubernetes
    // section on a simulated Kubernetes API of its own (one cluster at a time on 2 cores).
    let (kube, plain): (Vec<&str>, Vec<&str>) = sections.iter().partition(|s| **s == "kubernetes");
    if !plain.is_empty() {
        eprintln!("bench: starting the simulated cluster");
        let cluster = Cluster::start()?;
        cluster.ensure_bulk()?;
        let mut bench = Bench::new(&cluster, bins.clone(), params.clone())?;
        if let Some(secs) = args.hold {
            println!(
                "cluster {}: pod ns {} (pod pid {}), dev ns {}, client ns {}, workdir {}; \
                 socat relays in dev: 127.0.0.1:18080 (svc:8080), 127.0.0.1:19000 (svc:9000), \
                 SOCKS 127.0.0.1:11080; holding {secs} s (Ctrl-C ends it)",
                cluster.id(),
                cluster.ns_pod(),
                cluster.pod_pid(),
                cluster.ns_dev(),
                cluster.ns_client(),
                cluster.workdir().display()
            );
            hold(secs);
            return Ok(());
        }
        for r in 0..runs {
            for s in &plain {
                eprintln!("bench: run {}/{runs}: {s}", r + 1);
                bench.run_section(s, r, &mut figs)?;
            }
        }
    }
    if !kube.is_empty() {
        eprintln!("bench: starting the simulated Kubernetes API");
        let mut kb = KubeBench::new(bins.clone(), bin_dir.join("mirrord-agent"), params.clone())?;
        if let Some(secs) = args.hold {
            println!("{}; holding {secs} s (Ctrl-C ends it)", kb.describe());
            hold(secs);
            return Ok(());
        }
        for r in 0..runs {
            eprintln!("bench: run {}/{runs}: kubernetes", r + 1);
            kb.run(r, &mut figs)?;
        }
    }
    let measured = measured_from.elapsed();
    let load_end = loadavg();

    let command = format!(
        "./scripts/bench{}{}",
        if args.argv.is_empty() { "" } else { " " },
        args.argv.join(" ")
    );
    let mut md = String::new();
    md += &format!(
        "Command: `{command}` (= `cargo run --release -p mirrord-tests --bin bench -- {}`), \
         {date}, commit {commit}{}, {} build.\n\n",
        args.argv.join(" "),
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        },
        profile
    );
    md += &format!(
        "Machine: {} CPUs ({}), {:.1} GiB memory, Linux {}. Load average (1/5/15 min) at the \
         start {}, at the end {}.{}\n\n",
        machine.nproc,
        machine.cpu,
        machine.mem_gib,
        machine.kernel,
        machine.loadavg,
        load_end,
        if args.shared {
            " **The machine was shared**: other engineers were compiling and running tests \
             during the run, so absolute figures are noisy; the ratios compare variants \
             measured back to back."
        } else {
            ""
        }
    );
    md += &format!(
        "{runs} runs{}; in each run every variant is measured once per figure, the variants \
         interleaved (their order rotates from run to run), each measurement a fresh process \
         of the same client (`bench_client`) with the same warm-up. Shown: the median over the \
         runs and the min–max; the ratio is the median (min–max) of the per-run ratios to the \
         baseline. Measuring took {:.0} s ({:.0} s in all, build included).\n\n",
        if args.quick {
            " (--quick: small counts)"
        } else {
            ""
        },
        measured.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    md += &report::markdown_tables(&figs.0);
    let goals = report::goals(&figs.0);
    if !goals.is_empty() {
        md += "### Goals\n\n";
        for (what, goal, st) in &goals {
            let st = match st {
                Status::Met => "met",
                Status::Missed => "**missed**",
                Status::Unknown => "no data",
            };
            md += &format!("- {what}: {goal}: {st}\n");
        }
        md += "\n";
    }
    println!("{md}");

    std::fs::create_dir_all(&args.out)?;
    let json = json!({
        "command": command,
        "argv": args.argv,
        "date": date,
        "commit": commit,
        "dirty": dirty,
        "profile": profile,
        "quick": args.quick,
        "shared_machine": args.shared,
        "runs": runs,
        "params": format!("{params:?}"),
        "machine": {
            "nproc": machine.nproc,
            "mem_gib": machine.mem_gib,
            "kernel": machine.kernel,
            "cpu": machine.cpu,
            "loadavg_start": machine.loadavg,
            "loadavg_end": load_end,
        },
        "measure_secs": measured.as_secs_f64(),
        "total_secs": t0.elapsed().as_secs_f64(),
        "figures": figs.0.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(args.out.join("latest.md"), &md)?;
    eprintln!(
        "bench: wrote {} and latest.md",
        args.out.join("latest.json").display()
    );
    if args.write_doc {
        let path = workspace().join("BENCHMARKS.md");
        let doc = std::fs::read_to_string(&path).context("reading BENCHMARKS.md")?;
        let doc = update_benchmarks_md(&doc, &sections, &md).with_context(|| {
            format!(
                "BENCHMARKS.md lacks the markers for these results ({} ... {} or {} ... {})",
                RESULTS_MARKERS.0, RESULTS_MARKERS.1, KUBE_MARKERS.0, KUBE_MARKERS.1
            )
        })?;
        std::fs::write(&path, doc)?;
        eprintln!("bench: updated {}", path.display());
    }
    Ok(())
}
