//! The embedded simulator (`[simulator] enabled = true`, `streamherd
//! simulate`), present when the binary is built with the default cargo
//! feature `simulator`. It accepts the demo credentials and every
//! credential the configured sources present.

#[cfg(feature = "simulator")]
mod built_in {
    use std::net::SocketAddr;
    use std::path::Path;

    use anyhow::Context as _;
    use streamherd_actors::source::Credential;
    use streamherd_sim::{Scenario, SimCredentials, SimHandle, SimulatorConfig};

    use crate::config::Config;

    /// A running simulator.
    pub type Embedded = SimHandle;

    /// Starts the simulator when `[simulator] enabled = true`.
    pub async fn start(config: &Config) -> anyhow::Result<Option<SimHandle>> {
        if !config.simulator.enabled {
            return Ok(None);
        }
        let listen: SocketAddr = config.simulator.listen.parse().context("simulator.listen")?;
        let scenario = match &config.simulator.scenario {
            Some(path) => Scenario::from_file(path).map_err(|e| anyhow::anyhow!("simulator.scenario: {e}"))?,
            None => Scenario::default(),
        };
        let mut sim = SimulatorConfig {
            listen,
            rate: config.simulator.rate,
            keepalive_ms: config.simulator.keepalive_ms,
            scenario,
            record_sent: 0,
            // The Jetstream firehose runs at the same pace as one stream.
            jetstream_rate: config.simulator.rate,
            ..SimulatorConfig::default()
        };
        for source in &config.sources {
            for credential in source.credentials() {
                match credential {
                    Credential::OAuth1 { consumer_key, consumer_secret, token, token_secret } => {
                        sim.credentials.push(SimCredentials { consumer_key, consumer_secret, token, token_secret })
                    }
                    Credential::Bearer(token) => sim.mastodon_tokens.push(token),
                }
            }
        }
        let sim = streamherd_sim::start(sim).await.with_context(|| format!("starting the simulator on {listen}"))?;
        tracing::info!(addr = %sim.addr(), "embedded simulator listening");
        Ok(Some(sim))
    }

    /// `streamherd simulate`: serves until Ctrl-C.
    pub fn serve(listen: SocketAddr, scenario: Option<&Path>, rate: u32) -> Result<(), String> {
        let scenario = match scenario.map(Scenario::from_file).transpose() {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => return Err(format!("scenario: {e}")),
        };
        let system = actix_rt::System::new();
        system
            .block_on(async move {
                let sim = streamherd_sim::start(SimulatorConfig {
                    listen,
                    rate,
                    jetstream_rate: rate,
                    credentials: vec![SimCredentials::demo()],
                    scenario,
                    ..SimulatorConfig::default()
                })
                .await?;
                tracing::info!(addr = %sim.addr(), "simulator listening; Ctrl-C stops it");
                tokio::signal::ctrl_c().await?;
                sim.stop().await;
                std::io::Result::Ok(())
            })
            .map_err(|e| format!("simulator: {e}"))
    }
}

#[cfg(not(feature = "simulator"))]
mod built_in {
    use std::net::SocketAddr;
    use std::path::Path;

    use crate::config::Config;

    /// No simulator in this build: never constructed.
    pub enum Embedded {}

    impl Embedded {
        /// Unreachable: there is no value to stop.
        pub async fn stop(&self) {
            match *self {}
        }
    }

    /// Validation refuses `[simulator] enabled = true` in this build.
    pub async fn start(_: &Config) -> anyhow::Result<Option<Embedded>> {
        Ok(None)
    }

    /// `streamherd simulate` in a build without it.
    pub fn serve(_: SocketAddr, _: Option<&Path>, _: u32) -> Result<(), String> {
        Err("the simulator is not built in: rebuild with the default cargo feature `simulator`".into())
    }
}

pub use built_in::{serve, start, Embedded};
