//! The `flowgate` binary: parse the command line, then hand over to the library.

fn main() -> std::process::ExitCode {
    flowgate::cli::main()
}
