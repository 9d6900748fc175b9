//! The `partita` command with the test ops (`test-mix`, `test-fail`, ...) linked in, so the
//! integration tests can run their graphs on a real cluster of these processes.

fn main() -> std::process::ExitCode {
    partita_tests::link();
    partita_cli::main()
}
