fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    logpipe_core::service::main::<logpipe_mirror::MirrorService>()
}

/// Two malloc arenas instead of glibc's default of eight per core. Every shard runs a thread of
/// its own plus librdkafka's producer and consumer threads, and glibc gives a thread that finds
/// the arenas busy an arena of its own; memory freed into one arena is not reused by the others,
/// so at 200 B records the process held 275-336 MiB against its 256 MiB budget (the budget
/// bounds the buffers, and the arenas' slack came on top). With two it holds ~200 MiB. Called
/// first, before any thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
