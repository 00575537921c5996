//! The embedding examples are programs that check themselves; run each as it is.

#[path = "../../examples/custom_filter.rs"]
mod custom_filter;
#[path = "../../examples/embed.rs"]
mod embed;

#[test]
fn custom_filter_example_runs() {
    custom_filter::main().expect("examples/custom_filter.rs reports success");
}

#[test]
fn embed_example_runs() {
    embed::main().expect("examples/embed.rs reports success");
}
