//! The `flowgate` binary: parse the command line, then hand over to the library.

// mimalloc keeps small allocations in per-thread pages without glibc's arena locks and consolidation:
// a session create spends about a fifth less CPU in the allocator. Transparent huge pages stay off for
// its memory (`no_thp`) so that an idle server does not hold whole 2 MiB pages it barely touched.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flowgate::cli::main()
}
