//! The commands, one file each, and what they share (`wiring`). Each file imports what the
//! commands use from here.

pub(crate) use anyhow::{bail, Context, Result};
pub(crate) use clap::{Parser, Subcommand};
pub(crate) use rack_reconciler::config::{Backend, Config, LeaseSetting, LogFormat};
pub(crate) use rack_reconciler::exec::check;
pub(crate) use rack_reconciler::exec::discover::Discovery;
pub(crate) use rack_reconciler::exec::source::ExecSource;
pub(crate) use rack_reconciler::exec::watch::ExecWatch;
pub(crate) use rack_reconciler::lease::dynamodb::DynamoLeaseStore;
pub(crate) use rack_reconciler::lease::{default_holder, standby_message, Lease, Timing};
pub(crate) use rack_reconciler::metrics::Metrics;
pub(crate) use rack_reconciler::model::{ObservedRack, RackVersion};
pub(crate) use rack_reconciler::params;
pub(crate) use rack_reconciler::plan::{Action, Decision, Gate, Phase};
pub(crate) use rack_reconciler::progress::Mode;
pub(crate) use rack_reconciler::rack::aws::{sdk_config, AwsRack};
pub(crate) use rack_reconciler::rack::aws_exec::AwsExec;
pub(crate) use rack_reconciler::rack::fenced::FencedRack;
pub(crate) use rack_reconciler::rack::query::QueryClient;
pub(crate) use rack_reconciler::rack::sim::SimRack;
pub(crate) use rack_reconciler::rack::Rack;
pub(crate) use rack_reconciler::reconcile::{Reconciler, Settings, Trigger};
pub(crate) use rack_reconciler::spec::Declarations;
pub(crate) use rack_reconciler::status::{Status, StatusHandle};
pub(crate) use rack_reconciler::store::{Fetch, Location, Store, StoreError};
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::ExitCode;
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;
pub(crate) use tokio::sync::{mpsc, watch};
pub(crate) use tracing::{error, info};

pub(crate) use crate::exit;

mod apply;
mod exec_check;
mod gate;
mod history;
mod params_file;
mod plan;
mod run;
mod status;
mod wiring;

pub(crate) use apply::*;
pub(crate) use exec_check::*;
pub(crate) use gate::*;
pub(crate) use history::*;
pub(crate) use params_file::*;
pub(crate) use plan::*;
pub(crate) use run::*;
pub(crate) use status::*;
pub(crate) use wiring::*;
