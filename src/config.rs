//! Configuration: the embedded `mirror.toml`, then an optional file, then
//! `REGMIRROR_…` environment variables, merged by figment into validated
//! types. Parsing only validates; nothing here opens a file or a socket.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// The commented default configuration, shipped inside the binary.
pub const DEFAULT_TOML: &str = include_str!("../mirror.toml");

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Never contact an upstream.
    pub offline: bool,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    /// At least one; the first is the default for requests that name none.
    pub upstream: Vec<UpstreamConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// After SIGTERM: how long requests and downloads in flight may take to
    /// finish before they are cut (a cut download leaves nothing behind).
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Require Basic credentials from this htpasswd file (bcrypt entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2) with this certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub root: PathBuf,
    /// The most the store may hold (blobs and manifests); `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Eviction starts above this fraction of `max_size`...
    pub high_watermark: f64,
    /// ...and frees down to this fraction.
    pub low_watermark: f64,
}

impl StorageConfig {
    /// (high, low) thresholds in bytes, when there is a cap.
    pub fn watermarks(&self) -> Option<(u64, u64)> {
        self.max_size.map(|m| {
            let m = m.as_u64() as f64;
            ((m * self.high_watermark) as u64, (m * self.low_watermark) as u64)
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(with = "duration")]
    pub tag_ttl: Duration,
    pub memory_manifests: u64,
    /// Images never evicted: `[registry/]repository:tag`, `*` as the tag
    /// matches every tag.
    #[serde(default)]
    pub pin: Vec<String>,
    /// Images not pulled for this long are evicted; `None`: never.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_idle: Option<Duration>,
    /// How often the store is checked against the cap and `max_idle`
    /// (also right after a write crosses the high watermark).
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry name clients ask for, e.g. `docker.io`.
    pub name: String,
    /// Where that registry really is.
    pub url: Url,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (its first line), instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password, instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Repositories clients may pull through this upstream (`library/*`,
    /// `org/app`; `*` at the end matches any rest); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    #[serde(default = "default_connect", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_header", with = "duration")]
    pub header_timeout: Duration,
    #[serde(default = "default_read", with = "duration")]
    pub read_timeout: Duration,
    /// Overrides `cache.tag_ttl` for this upstream.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub tag_ttl: Option<Duration>,
}

fn default_connect() -> Duration {
    Duration::from_secs(10)
}
fn default_header() -> Duration {
    Duration::from_secs(30)
}
fn default_read() -> Duration {
    Duration::from_secs(30)
}

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// The embedded defaults, `file` over them if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("configuration file {} does not exist or is not a file", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("REGMIRROR_").split("__"));
        Self::from_figment(fig)
    }

    /// The embedded defaults with `toml` laid over them (no environment).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml)))
    }

    fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.into_iter().map(|e| describe(&e)).collect::<Vec<_>>().join("\n")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(format!("configuration error: {m}")));
        if self.upstream.is_empty() {
            return err("`upstream` must list at least one registry".into());
        }
        if self.server.max_connections == 0 {
            return err("`server.max_connections` must be at least 1".into());
        }
        if self.storage.root.as_os_str().is_empty() {
            return err("`storage.root` must be a directory path".into());
        }
        let (hi, lo) = (self.storage.high_watermark, self.storage.low_watermark);
        if !(0.0 < lo && lo < hi && hi <= 1.0) {
            return err(format!(
                "`storage.low_watermark` ({lo}) and `storage.high_watermark` ({hi}) must be fractions with 0 < low < high <= 1, e.g. 0.85 and 0.95"
            ));
        }
        if self.storage.max_size.is_some_and(|m| m.as_u64() == 0) {
            return err("`storage.max_size` must be more than 0 bytes; leave it out for no cap".into());
        }
        if self.cache.sweep_interval.is_zero() {
            return err("`cache.sweep_interval` must be longer than 0s".into());
        }
        for (i, p) in self.cache.pin.iter().enumerate() {
            let ok = p.rsplit_once(':').is_some_and(|(repo, tag)| !repo.is_empty() && !tag.is_empty());
            if !ok {
                return err(format!("`cache.pin[{i}]` = {p:?} is not of the form \"repository:tag\" (or \"repository:*\" for every tag)"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let key = format!("upstream[{i}]");
            let valid_name = !u.name.is_empty()
                && u.name.len() <= 253
                && u.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b));
            if !valid_name {
                return err(format!("`{key}.name` = {:?} is not a registry host name such as \"docker.io\" or \"ghcr.io\"", u.name));
            }
            if !seen.insert(u.name.as_str()) {
                return err(format!("`{key}.name` = {:?} appears twice; each upstream needs its own name", u.name));
            }
            if !matches!(u.url.scheme(), "http" | "https") || u.url.host_str().is_none() {
                return err(format!("`{key}.url` = {:?} must be an http:// or https:// URL with a host", u.url.as_str()));
            }
            let secrets = [u.password.is_some(), u.password_file.is_some(), u.password_env.is_some()].iter().filter(|x| **x).count();
            if secrets > 1 {
                return err(format!("`{key}`: set one of `password`, `password_file` and `password_env`"));
            }
            if (secrets == 1) != u.username.is_some() {
                return err(format!("`{key}`: `username` goes with `password`, `password_file` or `password_env`; set both or neither"));
            }
        }
        Ok(())
    }

    /// The password of an upstream: `password`, or the first line of
    /// `password_file` (read now, so a rotated secret is used on restart).
    pub fn password(u: &UpstreamConfig) -> Result<Option<String>, String> {
        match (&u.password, &u.password_file, &u.password_env) {
            (Some(p), _, _) => Ok(Some(p.clone())),
            (None, Some(f), _) => std::fs::read_to_string(f)
                .map(|s| Some(s.lines().next().unwrap_or("").to_owned()))
                .map_err(|e| format!("upstream {}: cannot read password_file {}: {e}", u.name, f.display())),
            (None, None, Some(var)) => {
                std::env::var(var).map(Some).map_err(|_| format!("upstream {}: password_env names {var}, which is not set", u.name))
            }
            (None, None, None) => Ok(None),
        }
    }

    /// The effective configuration as TOML, with every password replaced.
    pub fn masked_toml(&self) -> String {
        let mut c = self.clone();
        for u in &mut c.upstream {
            if u.password.is_some() {
                u.password = Some("********".into());
            }
        }
        toml::to_string(&c).unwrap_or_else(|e| format!("# cannot show the configuration: {e}"))
    }

    /// The tag TTL of upstream `i`.
    pub fn tag_ttl(&self, u: &UpstreamConfig) -> Duration {
        u.tag_ttl.unwrap_or(self.cache.tag_ttl)
    }
}

/// One figment error as a line that names the key (`server.listen`), where
/// it came from (the file, or the environment variable to look at), and
/// what was expected.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".").to_lowercase();
    let origin = match e.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => format!(" in {}", p.display()),
            _ if m.name.contains("environment") => {
                format!(" from environment variable REGMIRROR_{}", key.to_uppercase().replace('.', "__"))
            }
            _ => String::new(),
        },
        None => String::new(),
    };
    if key.is_empty() {
        format!("configuration error{origin}: {}", e.kind)
    } else {
        format!("configuration error: `{key}`{origin}: {}", e.kind)
    }
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration such as \"30s\" or \"5m\" ({e})")))
    }
}

mod opt_duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(c.storage.root, PathBuf::from("./data"));
        assert_eq!(c.upstream.len(), 1);
        assert_eq!(c.upstream[0].name, "docker.io");
        assert_eq!(c.upstream[0].url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
        assert!(!c.offline);
    }

    #[test]
    fn issue_example_works_as_written() {
        let c = Config::from_toml_str(
            r#"
[server]
listen = "127.0.0.1:15020"

[storage]
root = "/var/tmp/regmirror"        # blobs, temp files and the SQLite database

[[upstream]]
name = "docker.io"                  # the registry that clients ask for
url = "http://127.0.0.1:15000"      # where it really is; https://registry-1.docker.io by default
username = "lab"                    # optional credentials for the upstream
password = "labpass"
"#,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 15020);
        assert_eq!(c.upstream[0].username.as_deref(), Some("lab"));
        assert_eq!(c.upstream[0].read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn passwords_from_a_file_or_the_environment() {
        std::env::set_var("REGMIRROR_TEST_UPSTREAM_PW", "from-env");
        let c = Config::from_toml_str(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"http://x\"\nusername = \"u\"\npassword_env = \"REGMIRROR_TEST_UPSTREAM_PW\"\n",
        )
        .unwrap();
        assert_eq!(Config::password(&c.upstream[0]).unwrap().as_deref(), Some("from-env"));
        let e = Config::from_toml_str(
            "[[upstream]]\nname = \"x.io\"\nurl = \"http://x\"\nusername = \"u\"\npassword = \"p\"\npassword_env = \"V\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("one of"), "{e}");
        let c = Config::from_toml_str(
            "[[upstream]]\nname = \"x.io\"\nurl = \"http://x\"\nusername = \"u\"\npassword_env = \"REGMIRROR_TEST_UNSET_VAR\"\n",
        )
        .unwrap();
        assert!(Config::password(&c.upstream[0]).unwrap_err().contains("REGMIRROR_TEST_UNSET_VAR"));
        assert!(!c.masked_toml().contains("from-env"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = Config::from_toml_str("[server]\nlistn = \"1.2.3.4:5\"").unwrap_err().to_string();
        assert!(e.contains("listn") && e.contains("server"), "{e}");
        let e = Config::from_toml_str("[server]\nlisten = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = Config::from_toml_str("[cache]\ntag_ttl = \"five\"").unwrap_err().to_string();
        assert!(e.contains("cache.tag_ttl") && e.contains("duration"), "{e}");
        let e = Config::from_toml_str("[[upstream]]\nname = \"x.io\"\nurl = \"ftp://x\"").unwrap_err().to_string();
        assert!(e.contains("upstream[0].url"), "{e}");
        let e = Config::from_toml_str("[[upstream]]\nname = \"x.io\"\nurl = \"http://x\"\nusername = \"u\"").unwrap_err().to_string();
        assert!(e.contains("password"), "{e}");
    }
}
