//! `corecast-loadgen`: parses flags (and an optional TOML scenario file) and runs.

fn main() -> anyhow::Result<()> {
    let args = corecast_loadgen::config::Args::load()?;
    let cfg = corecast_loadgen::config::Config::from_args(args)?;
    corecast_loadgen::run(cfg)
}
