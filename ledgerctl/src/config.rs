//! Where the node URLs and the API key come from: flags, then the environment (`LEDGER_URL`,
//! `LEDGER_API_KEY`), then a TOML file (`--config PATH`, or by default
//! `$XDG_CONFIG_HOME/ledgerctl/config.toml`, else `~/.config/ledgerctl/config.toml`). Each
//! setting is taken from the first source that has it, independently of the other.
//!
//! The file:
//!
//! ```toml
//! urls = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
//! key = "asn_live_…"
//! ```
//!
//! An unknown field, a file that is not TOML, or a `--config` file that does not exist is a
//! usage error (exit 2); a missing default file is not.

use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;

use crate::exit::CtlError;

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node URLs, tried in order.
    pub urls: Option<Vec<String>>,
    /// API key (`asn_live_…`).
    pub key: Option<String>,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub urls: Vec<String>,
    pub key: Option<String>,
    /// Where each came from, for `--verbose` and error messages.
    pub urls_from: &'static str,
    pub key_from: &'static str,
}

/// The default config file, if a home or XDG directory is known.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("ledgerctl").join("config.toml"));
    }
    env("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| Path::new(&home).join(".config/ledgerctl/config.toml"))
}

pub fn read_file(path: &Path) -> Result<FileConfig, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::usage(format!("config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| CtlError::usage(format!("config {}: {e}", path.display())))
}

/// Resolves the settings: `flag_*` from the command line, `env` the environment, `config` the
/// `--config` flag.
pub fn resolve(
    flag_urls: &[String],
    flag_key: Option<&str>,
    config: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, CtlError> {
    let file = match config {
        Some(path) => read_file(path)?,
        None => match default_path(env) {
            Some(path) if path.is_file() => read_file(&path)?,
            _ => FileConfig::default(),
        },
    };
    let split = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let env_urls = env("LEDGER_URL").map(|u| split(&u)).unwrap_or_default();
    let (urls, urls_from) = if !flag_urls.is_empty() {
        (flag_urls.iter().flat_map(|u| split(u)).collect(), "--url")
    } else if !env_urls.is_empty() {
        (env_urls, "LEDGER_URL")
    } else if let Some(urls) = file.urls.filter(|u| !u.is_empty()) {
        (urls, "the config file")
    } else {
        (Vec::new(), "nowhere")
    };
    let env_key = env("LEDGER_API_KEY").filter(|k| !k.is_empty());
    let (key, key_from) = if let Some(key) = flag_key {
        (Some(key.to_owned()), "--key")
    } else if let Some(key) = env_key {
        (Some(key), "LEDGER_API_KEY")
    } else if let Some(key) = file.key {
        (Some(key), "the config file")
    } else {
        (None, "nowhere")
    };
    Ok(Settings {
        urls,
        key,
        urls_from,
        key_from,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::exit::Exit;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn flags_win_over_environment_over_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(
            dir.path(),
            "urls = [\"http://file:1\"]\nkey = \"file-key\"\n",
        );
        let env = env_of(&[
            ("LEDGER_URL", "http://env:1,http://env:2"),
            ("LEDGER_API_KEY", "env-key"),
        ]);
        let flags = vec!["http://flag:1".to_owned()];
        let all = resolve(&flags, Some("flag-key"), Some(&path), &env).expect("resolve");
        assert_eq!(all.urls, ["http://flag:1"]);
        assert_eq!(all.key.as_deref(), Some("flag-key"));
        let no_flags = resolve(&[], None, Some(&path), &env).expect("resolve");
        assert_eq!(no_flags.urls, ["http://env:1", "http://env:2"]);
        assert_eq!(no_flags.key.as_deref(), Some("env-key"));
        let file_only = resolve(&[], None, Some(&path), &env_of(&[])).expect("resolve");
        assert_eq!(file_only.urls, ["http://file:1"]);
        assert_eq!(file_only.key.as_deref(), Some("file-key"));
        // Each setting on its own: URL from a flag, key from the file.
        let mixed = resolve(&flags, None, Some(&path), &env_of(&[])).expect("resolve");
        assert_eq!(mixed.urls, ["http://flag:1"]);
        assert_eq!(mixed.key.as_deref(), Some("file-key"));
    }

    #[test]
    fn the_default_file_is_under_xdg_config_home_then_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("ledgerctl")).expect("mkdir");
        std::fs::write(
            xdg.join("ledgerctl/config.toml"),
            "urls = [\"http://xdg:1\"]\n",
        )
        .expect("write");
        let xdg_text = xdg.to_string_lossy().into_owned();
        let env = env_of(&[("XDG_CONFIG_HOME", &xdg_text), ("HOME", "/nonexistent")]);
        let settings = resolve(&[], None, None, &env).expect("resolve");
        assert_eq!(settings.urls, ["http://xdg:1"]);
        assert_eq!(
            default_path(&env_of(&[("HOME", "/home/op")])),
            Some(PathBuf::from("/home/op/.config/ledgerctl/config.toml"))
        );
        // No default file: nothing configured, and no error.
        let none = resolve(&[], None, None, &env_of(&[("HOME", "/nonexistent")])).expect("ok");
        assert!(none.urls.is_empty());
        assert_eq!(none.key, None);
    }

    #[test]
    fn a_bad_or_missing_config_file_is_a_usage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env_of(&[]);
        let missing = dir.path().join("missing.toml");
        let error = resolve(&[], None, Some(&missing), &env)
            .err()
            .map(|e| e.exit);
        assert_eq!(error, Some(Exit::Usage));
        let unknown = file(dir.path(), "url = \"http://a:1\"\n");
        let error = resolve(&[], None, Some(&unknown), &env).expect_err("unknown field");
        assert_eq!(error.exit, Exit::Usage);
        assert!(error.message.contains("url"), "{}", error.message);
        let broken = file(dir.path(), "urls = [\n");
        let error = resolve(&[], None, Some(&broken), &env)
            .err()
            .map(|e| e.exit);
        assert_eq!(error, Some(Exit::Usage));
    }
}
