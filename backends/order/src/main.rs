//! `order-service`: the order service on its own. `order-service --help` lists its settings
//! (flags, `ORDER_`-prefixed or bare environment variables, or a `--config` file). It needs
//! a service token for the product and payment services: `SERVICE_CLIENT_SECRET` (client
//! credentials at the user service) or `SERVICE_SIGNING_KEY_FILE` (minted locally).

kit::service_main!(order_service::Service);
