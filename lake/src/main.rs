/// mimalloc serves every allocation of the process, librdkafka's C code included (its
/// `override` feature replaces `malloc`/`free`): every row is a map of JSON values built and
/// dropped on the loop and its Parquet encoding runs beside it, a churn on which glibc's malloc
/// spent about 30% of the loader's CPU in a profile of the benchmark (bench/lake).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    logpipe_core::service::main::<logpipe_lake::LakeService>()
}
