//! `notification-service`: the notification service on its own. `notification-service --help`
//! lists its settings (flags, `NOTIFICATION_`-prefixed or bare environment variables, or a
//! `--config` file).

kit::service_main!(notification_service::Service);
