//! Every integration test, in one test binary (one link of the dependency tree instead of
//! one per file): each file under `tests/` is a module, named as the file. nextest still runs
//! every test in a process of its own.

mod common;

mod aws_exec;
mod aws_exec_canned;
mod aws_moto;
mod aws_rollouts;
mod aws_stack_updates;
mod aws_version;
mod churn;
mod cli;
mod dashboard;
mod deploy_template;
mod hangs;
mod iam_policy;
mod image;
mod layers;
mod lease;
mod metrics_http;
mod params_edits;
mod progress;
mod s3_params;
mod shell;
mod sim_converge;
mod sim_cost;
mod sim_exec;
mod sim_faults;
mod sim_hard_moments;
mod sim_history;
mod sim_lease;
mod sim_restart;
mod sim_stack;
mod sim_status;
mod sim_version;
mod trace_logs;
