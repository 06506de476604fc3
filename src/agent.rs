//! agent: `dynostat agent` and the CNB `exec-d` program (in progress).

/// Runs `dynostat agent`; returns the exit code.
pub fn main() -> i32 {
    0
}

/// Runs the CNB exec.d program; returns the exit code.
pub fn exec_d() -> i32 {
    0
}
