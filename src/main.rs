use clap::Parser;

fn main() -> std::process::ExitCode {
    alfa::allocator::keep_freed_activations();
    let cli = alfa::cli::Cli::parse();
    match alfa::cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
