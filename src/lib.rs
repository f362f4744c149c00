//! rack-reconciler: keeps a Convox rack's parameters where its operators want them.
//!
//! The design in one list:
//! - [`params`]: desired state, parsed and validated from the params file;
//! - [`model`]: what can be observed of a rack (no AWS types);
//! - [`plan`]: the pure decision, (desired, observed) → next step;
//! - [`reconcile`]: the loop that observes, plans, acts, and schedules the next run;
//! - [`rack`]: the boundary to a rack, with the `sim` and `aws` adapters;
//! - [`watch`], [`http`]: the other adapters (file watcher, HTTP endpoints);
//! - [`status`], [`metrics`]: what the controller tells people and Prometheus;
//! - [`logging`]: log set-up that keeps the SDK's request bodies out of every log.

pub mod clock;
pub mod config;
pub mod exec;
pub mod history;
pub mod http;
pub mod lease;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod params;
pub mod plan;
pub mod progress;
pub mod rack;
pub mod reconcile;
pub mod settings;
pub mod spec;
pub mod status;
pub mod store;
pub mod templates;
pub mod watch;
