//! dotenv: (in progress)
