use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = alfa::cli::Cli::parse();
    match alfa::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
