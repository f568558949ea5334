//! The command line (SPEC 2): `run`, `check`, `probe`, `simulate`,
//! `coverage`, logging and exit codes. [`main`] takes the registries, so a
//! binary that adds its own source or sink kinds gets the same commands by
//! calling it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use streamherd_actors::sinks::SinkRegistry;
use streamherd_actors::source::SourceRegistry;

use crate::app;
use crate::config::{self, LogFormat, Registries};
use crate::coverage::{self, By, Timestamp};

#[derive(Parser)]
#[command(
    name = "streamherd",
    version,
    about = "Keeps many streaming-API connections alive and hands every event to sinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file [default: $STREAMHERD_CONFIG, then ./config.toml]
    #[arg(long, global = true, env = "STREAMHERD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default)
    Run,
    /// Validate the config and print the plan
    Check,
    /// Connect one source for a while and print counts per event kind
    Probe {
        /// Source name
        #[arg(long)]
        source: String,
        /// How long to listen
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Serve the protocol simulator alone
    Simulate {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8900")]
        listen: SocketAddr,
        /// Scenario file (TOML) with fault scripts
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Messages per second per connection (0 = unthrottled)
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
    /// Report what the file sinks' archive covers: events, gaps, omissions per source and hour
    Coverage {
        /// Only what was received at or after this (RFC 3339, YYYY-MM-DD or YYYY-MM-DDTHH; UTC)
        #[arg(long, value_parser = coverage::parse_time)]
        since: Option<Timestamp>,
        /// Only what was received before this (same forms as --since)
        #[arg(long, value_parser = coverage::parse_time)]
        until: Option<Timestamp>,
        /// Only this source
        #[arg(long)]
        source: Option<String>,
        /// Bucket size
        #[arg(long, value_enum, default_value_t = By::Hour)]
        by: By,
        /// Also write a self-contained HTML page with a timeline per source
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to the stdout sink.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn load_or_exit(path: &Path, registries: &Registries) -> config::Config {
    match config::load(path, registries) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("streamherd: configuration error: {e}");
            std::process::exit(2);
        }
    }
}

fn fail(e: anyhow::Error) -> ! {
    let code = if e.downcast_ref::<config::ConfigError>().is_some() { 2 } else { 1 };
    eprintln!("streamherd: {e:#}");
    std::process::exit(code);
}

/// Runs the command line with these source and sink kinds, then exits
/// with the code of SPEC 2.
pub fn main(sources: SourceRegistry, sinks: SinkRegistry) -> ! {
    let registries = Registries { sources, sinks };
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let config = load_or_exit(&path, &registries);
            print!("{}", config::describe_plan(&config));
            if let Err(e) = config::check_control_listen(&config) {
                eprintln!("error: {}: control.listen: {e}", config.file.display());
                std::process::exit(2);
            }
            match config::check_coordination(&config) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {}: service.coordination: {e}", config.file.display());
                    2
                }
            }
        }
        Command::Run => {
            let config = load_or_exit(&path, &registries);
            init_logging(&config.service.log_level, config.service.log_format);
            app::run(config, registries).unwrap_or_else(|e| fail(e))
        }
        Command::Probe { source, seconds } => {
            let config = load_or_exit(&path, &registries);
            init_logging(&config.service.log_level, config.service.log_format);
            match app::probe(config, &registries, &source, seconds) {
                Ok((report, code)) => {
                    print!("{report}");
                    code
                }
                Err(e) => fail(e),
            }
        }
        Command::Simulate { listen, scenario, rate } => {
            init_logging("info", LogFormat::Pretty);
            match crate::sim::serve(listen, scenario.as_deref(), rate) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("streamherd: {e}");
                    if config::SIMULATOR_BUILT_IN {
                        1
                    } else {
                        2
                    }
                }
            }
        }
        Command::Coverage { since, until, source, by, html } => {
            let config = load_or_exit(&path, &registries);
            let options = coverage::Options { since, until, source, by, html, cwd: coverage::current_dir() };
            match coverage::run(&config, &options) {
                Ok(outcome) => {
                    for warning in &outcome.warnings {
                        eprintln!("streamherd: warning: {warning}");
                    }
                    print!("{}", outcome.text);
                    0
                }
                Err(e) => {
                    eprintln!("streamherd: {e}");
                    e.exit_code()
                }
            }
        }
    };
    std::process::exit(code)
}
