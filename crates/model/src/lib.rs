//! Satchel's pure domain model.
//!
//! Everything here is free of I/O so that the server, the metadata stores, the
//! client and the CLI agree on one definition of what a valid path, name, glob
//! and query is, and on the rules that pick files for a download.

pub mod access;
pub mod api;
pub mod ci;
pub mod diff;
pub mod expr;
pub mod frames;
pub mod glob;
pub mod id;
pub mod ignore;
pub mod mime;
pub mod names;
pub mod path;
pub mod query;
pub mod range;
pub mod selector;
pub mod units;
pub mod version;
