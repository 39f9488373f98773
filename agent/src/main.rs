/// mimalloc serves every allocation of the process, librdkafka's C code included (its
/// `override` feature replaces `malloc`/`free`): each record costs librdkafka about seven
/// allocations made on the tailing thread and freed on the delivery thread, a pattern on which
/// glibc's malloc spent ~25% of the agent's CPU. Transparent huge pages are off for it
/// (`no_thp`): with them its arenas held ~20 MiB more at full speed (README, "Memory and CPU").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    logpipe_core::service::main::<logpipe_agent::AgentService>()
}
