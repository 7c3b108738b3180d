//! Logging: readable lines by default, etcd's zap-style JSON lines with `--logger zap`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(logger: &str, level: &str) {
    // etcd's "panic" and "fatal" levels only log what precedes an exit: treat them as errors.
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_env("KEELSON_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},openraft=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if logger == "zap" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
