//! procfile: (in progress)
