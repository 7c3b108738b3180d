use std::process::ExitCode;

use keelson::config::{self, Parsed};
use keelson::version::{ETCD_VERSION, KEELSON_VERSION};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env: Vec<(String, String)> = std::env::vars().collect();
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
