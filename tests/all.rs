//! Every integration test, in one binary: one link instead of one per file keeps the release
//! build of `.ci/run` minutes shorter. Each `tNN_*.rs` is a module; run one file's tests with
//! `cargo test --release --test all tNN_name::` (a name filter), one test by its full name.

mod common;

mod codec_cases;

#[path = "../examples/counter/counter_actor.rs"]
mod counter_actor;

mod t10_basic;
mod t15_raft_properties;
mod t16_membership_core;
mod t17_lease_core;
mod t20_lifecycle;
mod t30_wire;
mod t35_codec_fuzz;
mod t40_no_leader;
mod t45_registry;
mod t46_http;
mod t47_cli;
mod t48_nacos;
mod t49_backpressure;
mod t50_process;
mod t52_registry_process;
mod t55_faults;
mod t56_membership;
mod t57_membership_process;
mod t58_snapshots;
mod t59_snapshot_cli;
mod t60_sim;
mod t61_compaction;
mod t62_dister_services;
mod t63_metrics;
mod t64_console;
mod t65_tls;
mod t70_extension;
mod t80_chaos;
mod t82_registry_load;
mod t90_regressions;
