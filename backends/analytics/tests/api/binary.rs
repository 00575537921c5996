//! The real `analytics-service` binary: CLI, JSON logs, health, the OpenAPI document,
//! graceful stop.

#[tokio::test]
async fn the_binary_has_a_command_line_json_logs_and_stops_gracefully_on_sigterm() {
    kit::testing::binary::check_service_binary(
        env!("CARGO_BIN_EXE_analytics-service"),
        "analytics",
        &[],
    )
    .await;
}
