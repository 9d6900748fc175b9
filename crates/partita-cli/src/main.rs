//! The `partita` binary; everything is in the library ([`partita_cli::main`]).

/// Workers hold chunks of tens of megabytes; glibc maps each such allocation afresh from
/// the kernel (zeroed pages, a page fault per 4 KiB), mimalloc reuses freed ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(all(feature = "blas", unix))]
    name_openblas_kernels();
    partita_cli::main()
}

/// OpenBLAS picks its kernels by CPU model when it loads (before `main`), and a release
/// older than the CPU falls back to its slowest ones; it reads `OPENBLAS_CORETYPE` only
/// then. So, unless the user set it, restart once with it named from the CPU's flags.
#[cfg(all(feature = "blas", unix))]
fn name_openblas_kernels() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let (Some(core), Ok(exe)) = (
        partita_array::linalg::openblas_core_hint(),
        std::env::current_exe(),
    ) else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OPENBLAS_CORETYPE", core)
        .exec();
    eprintln!("partita: could not restart with OPENBLAS_CORETYPE={core}: {err}");
}
