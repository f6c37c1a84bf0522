//! Flag over variable over file over default, through the same `Keys` the binaries flatten
//! into their command lines. Its own test binary with one test, because it sets process
//! environment variables (clap reads them when the command is built).

use clap::Parser;
use corecast_config::{Flags, Keys};

struct TestFlags;

impl Flags for TestFlags {
    const VARIABLES: &'static [&'static str] = &["CORECAST_SHARDS", "CORECAST_JWT_SECRET"];
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    keys: Keys<TestFlags>,
}

fn load(args: &[&str]) -> Result<corecast_config::Config, String> {
    let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    cli.keys.load().map_err(|e| e.to_string())
}

#[test]
fn flag_over_variable_over_file_over_default() {
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CORECAST_")) {
        std::env::remove_var(k);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corecast.toml");
    std::fs::write(
        &file,
        "[server]\nshards = 5\nadmin_threads = 7\n[limits]\nrate_limit_per_min = 9\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    std::env::set_var("CORECAST_SHARDS", "3");
    std::env::set_var("CORECAST_ADMIN_THREADS", "6");
    std::env::set_var("CORECAST_JWT_SECRET", "");

    let c = load(&["--config", file, "--shards", "2"]).unwrap();
    assert_eq!(
        c.server.shards, 2,
        "the flag over the variable and the file"
    );
    assert_eq!(c.server.admin_threads, 6, "the variable over the file");
    assert_eq!(c.limits.rate_limit_per_min, 9, "the file over the default");
    assert_eq!(c.limits.max_text_chars, 4000, "the default");
    assert_eq!(
        c.auth.jwt_secret, None,
        "an empty variable leaves the key unset"
    );

    let c = load(&["--shards", "2"]).unwrap();
    assert_eq!(
        (
            c.server.shards,
            c.server.admin_threads,
            c.limits.rate_limit_per_min
        ),
        (2, 6, 30),
        "without a file: flag, variable, default"
    );
    assert_eq!(load(&[]).unwrap().server.shards, 3, "the variable alone");

    std::env::set_var("CORECAST_ADMIN_THREADS", "many");
    let err = load(&[]).unwrap_err();
    assert!(
        err.contains("invalid value \"many\" for CORECAST_ADMIN_THREADS"),
        "{err}"
    );
    std::env::set_var("CORECAST_ADMIN_THREADS", "0");
    let err = load(&[]).unwrap_err();
    assert!(err.contains("CORECAST_ADMIN_THREADS"), "{err}");
    std::env::remove_var("CORECAST_ADMIN_THREADS");

    let err = load(&["--admin-threads", "2"]).unwrap_err();
    assert!(
        err.contains("unexpected argument '--admin-threads'"),
        "{err}"
    );
}
