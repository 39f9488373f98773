//! `logpipe-validator [run|check] --config FILE`, and `logpipe-validator replay ...`: the
//! shared runner has `run` and `check`; `replay` is a one-shot command with its own arguments,
//! so it is dispatched here before the runner parses the command line.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "replay") {
        let program = args.next().unwrap_or_default();
        return logpipe_validator::replay::main(std::iter::once(program).chain(args.skip(1)));
    }
    logpipe_core::service::main::<logpipe_validator::ValidatorService>()
}
