//! runner: `dynostat start`, `run` and `check` (in progress).

use std::path::PathBuf;

/// `dynostat start` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Process names to run (default: all).
    pub names: Vec<String>,
    /// The Procfile.
    #[arg(short = 'f', long = "procfile", default_value = "Procfile")]
    pub procfile: PathBuf,
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
    /// The root directory to run in.
    #[arg(short = 'd', long = "root")]
    pub root: Option<PathBuf>,
    /// Formation, e.g. `web=2,worker=1` or `all=2`.
    #[arg(short = 'm', long = "formation")]
    pub formation: Option<String>,
    /// Base port.
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Seconds between SIGTERM and SIGKILL at shutdown.
    #[arg(short = 't', long = "timeout", default_value_t = 5)]
    pub timeout: u64,
    /// Do not print timestamps.
    #[arg(long = "no-timestamp")]
    pub no_timestamp: bool,
    /// Do not run the listener.
    #[arg(long = "no-statsd")]
    pub no_statsd: bool,
    /// The real environment does not win over env files.
    #[arg(long = "env-override")]
    pub env_override: bool,
    /// auto, always or never.
    #[arg(long = "color", default_value = "auto")]
    pub color: String,
}

/// `dynostat run` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
    /// Do not run the listener.
    #[arg(long = "no-statsd")]
    pub no_statsd: bool,
    /// The real environment does not win over env files.
    #[arg(long = "env-override")]
    pub env_override: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `dynostat check` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The Procfile.
    #[arg(short = 'f', long = "procfile", default_value = "Procfile")]
    pub procfile: PathBuf,
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
}

/// Runs `start`; returns the exit code.
pub fn start(args: &StartArgs) -> i32 {
    let _ = args;
    1
}

/// Runs `run`; returns the exit code.
pub fn run(args: &RunArgs) -> i32 {
    let _ = args;
    1
}

/// Runs `check`; returns the exit code.
pub fn check(args: &CheckArgs) -> i32 {
    let _ = args;
    1
}
