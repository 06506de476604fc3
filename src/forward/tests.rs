//! HTTP tests for the forwarder (added next).
