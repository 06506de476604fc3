//! The `dynostat` command line. Only argument parsing and dispatch live here;
//! everything else is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A DogStatsD listener for Heroku dynos that forwards to Datadog and loses
/// nothing on SIGTERM, plus a foreman-style local runner.
#[derive(Debug, Parser)]
#[command(name = "dynostat", version, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the DogStatsD listener, aggregator and forwarder in the foreground.
    Serve {
        /// As under `dynostat agent`: an invalid optional setting is logged
        /// and replaced by its default instead of stopping the listener.
        #[arg(long, hide = true)]
        on_dyno: bool,
    },
    /// Supervise `serve` beside a dyno's app (what the boot script runs).
    Agent,
    /// Run the Procfile's processes, foreman-style, with the listener beside them.
    Start(dynostat::process::runner::StartArgs),
    /// Run one command with the env files loaded and the listener beside it.
    Run(dynostat::process::runner::RunArgs),
    /// Validate the Procfile and env files and print what would run.
    Check(dynostat::process::runner::CheckArgs),
    /// Print the version and build information.
    Version,
    /// CNB exec.d program: start the agent detached, write env TOML to fd 3, exit.
    #[command(name = "exec-d", hide = true)]
    ExecD,
}

fn main() -> ExitCode {
    // The CNB launcher runs `<layer>/exec.d/dynostat` (a symlink to this
    // binary) with no arguments.
    if dynostat::dyno::execd::invoked_as_exec_d() {
        return exit(dynostat::dyno::execd::main());
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { on_dyno } => {
            let read = if on_dyno {
                dynostat::config::Config::from_env_on_dyno
            } else {
                dynostat::config::Config::from_env
            };
            let config = match read() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("dynostat: {e}");
                    return ExitCode::from(2);
                }
            };
            dynostat::serve::init_logging(config.log_level);
            for note in &config.notes {
                tracing::error!("{note}");
            }
            for ignored in &config.ignored {
                tracing::warn!("{ignored}");
            }
            dynostat::serve::migration::warn(&config);
            match dynostat::serve::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dynostat: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Agent => exit(dynostat::dyno::agent::main()),
        Command::Start(args) => exit(dynostat::process::runner::start(&args)),
        Command::Run(args) => exit(dynostat::process::runner::run(&args)),
        Command::Check(args) => exit(dynostat::process::runner::check(&args)),
        Command::ExecD => exit(dynostat::dyno::execd::main()),
        Command::Version => {
            println!(
                "dynostat {} ({} {})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS
            );
            ExitCode::SUCCESS
        }
    }
}

/// Maps a process exit code (0-255) to an [`ExitCode`].
fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}
