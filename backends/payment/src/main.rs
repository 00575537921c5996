//! `payment-service`: the payment service on its own. `payment-service --help` lists its
//! settings (flags, `PAYMENT_`-prefixed or bare environment variables, or a `--config` file).

kit::service_main!(payment_service::Service);
