pub use gateway_core::*;
