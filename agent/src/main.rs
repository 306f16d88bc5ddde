//! `enclaveid`: the EnclaveID agent and its command-line tools.
//!
//! Thin on purpose: tracing, the version line, the CLI, then library code. Bad
//! configuration exits 64 (EX_USAGE) before any socket is bound.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
