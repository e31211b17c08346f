//! The `flowgate` binary: parse the command line, then hand over to the library.

// mimalloc keeps small allocations in per-thread pages without glibc's arena locks and consolidation
// (malloc and free were about a tenth of the server's CPU in a session-create run; with mimalloc a
// create costs 112-132 instead of 115-153 µs, bench/README). Transparent huge pages stay off for its
// memory (`no_thp`) so that an idle server does not hold whole 2 MiB pages it barely touched.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flowgate::cli::main()
}
