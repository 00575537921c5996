//! `analytics-service`: the analytics service on its own. `analytics-service --help` lists its
//! settings (flags, `ANALYTICS_`-prefixed or bare environment variables, or a `--config` file).

kit::service_main!(analytics_service::Service);
