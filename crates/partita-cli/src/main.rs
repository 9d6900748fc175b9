//! The `partita` binary; everything is in the library ([`partita_cli::main`]).

/// Workers hold chunks of tens of megabytes; glibc maps each such allocation afresh from
/// the kernel (zeroed pages, a page fault per 4 KiB), mimalloc reuses freed ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    partita_cli::main()
}
