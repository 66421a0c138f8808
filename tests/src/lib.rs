//! Test support for the capture system: fixtures that start **real** servers on free ports.
//!
//! Every end-to-end test in `tests/tests/` talks to the same kinds of servers a Pi and the
//! cloud talk to in production: Mosquitto, Garage (S3-compatible), PostgreSQL and RabbitMQ.
//! Nothing here is a mock. A fixture
//!
//! - picks free ports on 127.0.0.1 and keeps them for its whole life, so that a server that
//!   was stopped or killed comes back on the same address with the same data;
//! - waits for readiness by polling with a deadline, never by sleeping a fixed time;
//! - can be stopped (SIGTERM), killed (SIGKILL) and started again, for fault injection;
//! - cleans up (kills its processes, removes its data) when dropped.
//!
//! PostgreSQL and RabbitMQ come in two flavours. The installed system server (started by
//! `scripts/setup`) is shared: each test gets its own database or its own uniquely named
//! exchange and queue on it, which is cheap. A private server started by the fixture itself is
//! used by tests that stop or kill the server.

#![forbid(unsafe_code)]

pub mod fixtures;
pub mod system;
