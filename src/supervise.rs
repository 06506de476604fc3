//! supervise: (in progress)
