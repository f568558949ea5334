//! The `streamherd` binary: CLI parsing, logging, config loading, then
//! `app::run`. Errors are one line on stderr with the exit codes of SPEC 2.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use streamherd::app;
use streamherd::config::{self, LogFormat};
use streamherd_actors::sinks::SinkRegistry;
use streamherd_sim::{self as simulator, Scenario, SimCredentials, SimulatorConfig};

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

fn load_or_exit(path: &std::path::Path) -> config::Config {
    match config::load(path, &SinkRegistry::builtin()) {
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

fn main() {
    let cli = Cli::parse();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let config = load_or_exit(&path);
            print!("{}", config::describe_plan(&config));
        }
        Command::Run => {
            let config = load_or_exit(&path);
            init_logging(&config.service.log_level, config.service.log_format);
            match app::run(config, SinkRegistry::builtin()) {
                Ok(code) => std::process::exit(code),
                Err(e) => fail(e),
            }
        }
        Command::Probe { source, seconds } => {
            let config = load_or_exit(&path);
            init_logging(&config.service.log_level, config.service.log_format);
            match app::probe(config, &source, seconds) {
                Ok((report, code)) => {
                    print!("{report}");
                    std::process::exit(code);
                }
                Err(e) => fail(e),
            }
        }
        Command::Simulate { listen, scenario, rate } => {
            init_logging("info", LogFormat::Pretty);
            let scenario = match scenario.map(|p| Scenario::from_file(&p)).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => {
                    eprintln!("streamherd: scenario: {e}");
                    std::process::exit(2);
                }
            };
            let system = actix_rt::System::new();
            let result = system.block_on(async move {
                let sim = simulator::start(SimulatorConfig {
                    listen,
                    rate,
                    credentials: vec![SimCredentials::demo()],
                    scenario,
                    ..SimulatorConfig::default()
                })
                .await?;
                tracing::info!(addr = %sim.addr(), "simulator listening; Ctrl-C stops it");
                tokio::signal::ctrl_c().await?;
                sim.stop().await;
                std::io::Result::Ok(())
            });
            if let Err(e) = result {
                eprintln!("streamherd: simulator: {e}");
                std::process::exit(1);
            }
        }
    }
}
