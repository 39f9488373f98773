//! `logpipe-validator [run|check] --config FILE`, and `logpipe-validator replay ...`: the
//! shared runner has `run` and `check`; `replay` is a one-shot command with its own arguments,
//! so it is dispatched here before the runner parses the command line.

/// mimalloc serves every allocation of the process, librdkafka's C code included (its
/// `override` feature replaces `malloc`/`free`): each record is parsed into a JSON tree of a few
/// dozen small allocations, freed right after it is encoded, and librdkafka allocates each
/// produced message and its headers on the checking thread and frees them on its own; glibc's
/// malloc spent ~20% of the validator's CPU on that (README, "Where the time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "replay") {
        let program = args.next().unwrap_or_default();
        return logpipe_validator::replay::main(std::iter::once(program).chain(args.skip(1)));
    }
    logpipe_core::service::main::<logpipe_validator::ValidatorService>()
}
