//! `product-service`: the product service on its own. `product-service --help` lists its
//! settings (flags, `PRODUCT_`-prefixed or bare environment variables, or a `--config` file).

kit::service_main!(product_service::Service);
