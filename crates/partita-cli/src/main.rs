//! The `partita` binary; everything is in the library ([`partita_cli::main`]).

fn main() -> std::process::ExitCode {
    partita_cli::main()
}
