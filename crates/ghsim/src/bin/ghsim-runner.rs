//! `ghsim-runner`: the runner stand-in, with the real runner's interface.
//!
//! `ghsim-runner run [--jitconfig <b64>]` (or `ACTIONS_RUNNER_INPUT_JITCONFIG`
//! in the environment), `ghsim-runner --version`. See `ghsim::runner`.

use std::process::ExitCode;

use tokio::sync::watch;

fn usage() -> ExitCode {
    eprintln!("usage: ghsim-runner run [--jitconfig <base64>] | ghsim-runner --version");
    ExitCode::from(64)
}

fn main() -> ExitCode {
    ghsim::runner::mark_process_start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-v") {
        println!("ghsim-runner {}", ghsim::runner::VERSION);
        return ExitCode::SUCCESS;
    }
    let mut jit = None;
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("run") | None => {}
        Some(_) => return usage(),
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jitconfig" => match it.next() {
                Some(v) => jit = Some(v.clone()),
                None => return usage(),
            },
            s if s.starts_with("--jitconfig=") => jit = Some(s["--jitconfig=".len()..].to_string()),
            // Flags the real runner accepts and the stand-in does not need.
            "--once" | "--ephemeral" | "--disableupdate" => {}
            "--startuptype" => {
                it.next();
            }
            _ => return usage(),
        }
    }
    let jit = match jit.or_else(|| std::env::var(ghsim::runner::JIT_ENV).ok()) {
        Some(j) if !j.trim().is_empty() => j,
        _ => {
            eprintln!(
                "ghsim-runner: no JIT config: pass --jitconfig <base64> or set {}",
                ghsim::runner::JIT_ENV
            );
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ghsim-runner: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Handlers are installed before anything else, so an early SIGTERM is handled too.
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("ghsim-runner: error: cannot install signal handlers");
            return ExitCode::from(1);
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("ghsim-runner: received stop signal");
            let _ = stop_tx.send(true);
        });
        let root = ghsim::runner::runner_root();
        match ghsim::runner::run(
            &jit,
            ghsim::runner::Options {
                root,
                stop: stop_rx,
            },
        )
        .await
        {
            Ok(o) => {
                eprintln!("ghsim-runner: ran job {} ({})", o.job_id, o.conclusion);
                ExitCode::SUCCESS
            }
            Err(ghsim::Error::Runner { code, message }) => {
                eprintln!("ghsim-runner: error: {message}");
                ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
            Err(other) => {
                eprintln!("ghsim-runner: error: {other}");
                ExitCode::from(1)
            }
        }
    })
}
