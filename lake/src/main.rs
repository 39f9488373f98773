fn main() -> std::process::ExitCode {
    logpipe_core::service::main::<logpipe_lake::LakeService>()
}
