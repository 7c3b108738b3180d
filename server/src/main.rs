use std::process::ExitCode;

use keelson::config::{self, Parsed};
use keelson::version::{ETCD_VERSION, KEELSON_VERSION};

/// jemalloc for every allocation of the process, RocksDB's included (see the workspace
/// Cargo.toml for the measurement that chose it).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
    if args.first().map(String::as_str) == Some("leave") {
        return leave(&args[1..], &env);
    }
    if args.first().map(String::as_str) == Some("snapshot") {
        return snapshot(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("auth-bootstrap") {
        return auth_bootstrap(&args[1..]);
    }
    let config = match config::parse(&args, &env) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Version) => {
            println!("keelson Version: {KEELSON_VERSION}");
            println!("etcd Version: {ETCD_VERSION}");
            println!(
                "Git SHA: {}",
                option_env!("KEELSON_GIT_SHA").unwrap_or("unknown")
            );
            println!("Rust Version: {}", env!("KEELSON_RUSTC_VERSION"));
            println!(
                "OS/Arch: {}/{}",
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Help) => {
            println!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("keelson: {e}");
            eprintln!("Try 'keelson --help' for more information.");
            return ExitCode::from(2);
        }
    };
    keelson::logging::init(&config.logger, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keelson")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelson: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keelson::boot::run(*config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("keelson: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `keelson leave [--if-scaled-down=statefulset/NAME] [--kube-service-account-dir=DIR]
/// [--timeout=30s] <member flags>`: a preStop hook. It always exits 0 once it ran, so that the
/// pod stops; what happened is on stderr.
fn leave(args: &[String], env: &[(String, String)]) -> ExitCode {
    let (options, member_flags) = match keelson::leave::parse_options(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("keelson leave: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match config::parse(&member_flags, env) {
        Ok(Parsed::Run(config)) => config,
        Ok(_) => {
            eprintln!("keelson leave: expected the member's flags");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("keelson leave: {e}");
            return ExitCode::from(2);
        }
    };
    keelson::logging::init(&config.logger, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelson leave: cannot start the async runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    match runtime.block_on(keelson::leave::run(&config, &options)) {
        Ok(what) => tracing::info!("keelson leave: {what}"),
        Err(e) => tracing::warn!("keelson leave: {e}"),
    }
    ExitCode::SUCCESS
}

/// `keelson snapshot restore|status ...` (etcdctl's snapshot subcommands).
fn snapshot(args: &[String]) -> ExitCode {
    match keelson::snapshot::cli::run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(keelson::snapshot::SnapshotError::Usage(message)) => {
            eprintln!("Error: {message}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `keelson auth-bootstrap --endpoints=... --root-password-file=...`: adds root and enables auth
/// unless auth is on already (the chart's Job; docs/deploy.md).
fn auth_bootstrap(args: &[String]) -> ExitCode {
    let options = match keelson::auth_bootstrap::parse_options(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("keelson auth-bootstrap: {e}");
            return ExitCode::from(2);
        }
    };
    keelson::logging::init("zap", "info");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelson auth-bootstrap: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keelson::auth_bootstrap::run(&options)) {
        Ok(what) => {
            tracing::info!("keelson auth-bootstrap: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("keelson auth-bootstrap: {e}");
            eprintln!("keelson auth-bootstrap: {e}");
            ExitCode::FAILURE
        }
    }
}
