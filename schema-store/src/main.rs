use std::process::ExitCode;

fn main() -> ExitCode {
    // `hash-password` is a helper for writing configs, not a service command, so it is handled
    // before the shared run/check runner parses the command line.
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        return logpipe_schema_store::hash_password_command("logpipe-schema-store");
    }
    logpipe_core::service::main::<logpipe_schema_store::SchemaStore>()
}
