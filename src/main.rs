//! `fm`: the FlowMason engine's command line.

use clap::Parser;

/// The engine allocates many small, short-lived values per stage (events, outputs, messages); mimalloc
/// serves them several times faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flowmason::cli::{self, Cli};

fn main() {
    // Before anything builds a TLS client (see docs/architecture.md: kube and reqwest must agree on ring).
    flowmason::llm::http::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if !cli.command.is_server() {
        end_quietly_on_broken_pipe();
    }
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::exit_code_of(&error)
        }
    };
    std::process::exit(code);
}

/// Restores the default action of SIGPIPE, which the Rust runtime ignores: a write to a pipe whose
/// reader has gone (`fm history show RUN | head`) then ends the process silently, as it does any Unix
/// tool, instead of failing the write and panicking in `println!`.
fn end_quietly_on_broken_pipe() {
    // SAFETY: called once at start-up, before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
