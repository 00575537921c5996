//! `user-service`: the user service on its own. `user-service --help` lists its settings
//! (flags, `USER_`-prefixed or bare environment variables, or a `--config` file).

kit::service_main!(user_service::Service);
