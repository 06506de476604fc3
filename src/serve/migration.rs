//! The official Datadog buildpack's settings that dynostat does not read:
//! one warning each at start (`config::serve::MIGRATION`), and one for its
//! `prerun.sh` when the app has one, so a migrated app learns what changed.
//!
//! Must never: stop the listener, or read a file beyond asking whether the
//! script exists.

use std::path::Path;

use crate::config::Config;

/// Logs the warnings (before the listener starts).
pub fn warn(config: &Config) {
    for migration in &config.migration {
        tracing::warn!("{migration}");
    }
    // Relative to the app's directory (the listener's working directory), as
    // the official buildpack reads `DD_HEROKU_CONF_FOLDER`; or the absolute
    // path the variable spells.
    let prerun = [
        config.prerun_script.clone(),
        Path::new("/").join(&config.prerun_script),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if let Some(script) = prerun {
        tracing::warn!(
            script = %script.display(),
            "the official Datadog buildpack's prerun.sh is not run: dynostat reads only config vars; \
             set what it exported with `heroku config:set`, or export it from a .profile.d script"
        );
    }
}
