//! corecast's benchmarks. This crate only carries the microbenchmarks (`benches/`, run
//! with `cargo bench -p corecast-bench`); the end-to-end comparison against the Node.js
//! baseline is `bench/compare.sh`, which drives `corecast-loadgen`. Nothing here is a
//! test: speed is measured and reported, never asserted.
