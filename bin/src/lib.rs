//! The library side of the `sdc` package: what the `sdc` binary, its benchmarks and its
//! integration tests share. Its one module is [`procs`]: running `sdc` processes and reading
//! what their daemons log.

pub mod procs;
