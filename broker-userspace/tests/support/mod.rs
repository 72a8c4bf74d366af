//! Helpers shared by the integration tests. Each test crate uses a part.
#![allow(dead_code)]

pub mod daemon;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod pins;
pub mod relay;
pub mod wireguard;
