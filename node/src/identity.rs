//! What a data directory says about whom it belongs to: `identity.json` (node id, cluster id),
//! the node's ed25519 key `node.key` (mode 0600) and, on the bootstrap node, `admin.key`.
//!
//! Invariants: a data directory belongs to one node id forever and, once joined, to one
//! cluster; secrets are written with mode 0600 and fsynced before they are used.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde::Serialize;

const IDENTITY_FILE: &str = "identity.json";
const NODE_KEY_FILE: &str = "node.key";
pub const ADMIN_KEY_FILE: &str = "admin.key";
const IDENTITY_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub node_id: u64,
    pub cluster_id: Option<String>,
    /// This directory created its cluster with `--bootstrap` (rather than joining one).
    #[serde(default)]
    pub bootstrapped: bool,
}

/// Writes `bytes` to `path` atomically and durably: tmp file (mode `mode`), fsync, rename,
/// fsync the directory.
pub fn write_file_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    /// Creates the directory if needed and checks that it is usable.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let probe = path.join(".write-probe");
        fs::write(&probe, b"probe")
            .and_then(|()| fs::remove_file(&probe))
            .with_context(|| format!("data directory {} is not writable", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn store_dir(&self) -> PathBuf {
        self.path.join("store")
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.path.join(ADMIN_KEY_FILE)
    }

    /// Reads `identity.json`, or creates it for `node_id`. Refuses a directory of another node.
    pub fn identity(&self, node_id: u64) -> anyhow::Result<Identity> {
        let path = self.path.join(IDENTITY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let identity: Identity = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is damaged", path.display()))?;
                if identity.format != IDENTITY_FORMAT {
                    bail!(
                        "{} has format {}, this ledgerd reads {IDENTITY_FORMAT}",
                        path.display(),
                        identity.format
                    );
                }
                if identity.node_id != node_id {
                    bail!(
                        "data directory {} belongs to node {}, not node {node_id}; node ids are never reused: give each node its own data directory",
                        self.path.display(),
                        identity.node_id
                    );
                }
                Ok(identity)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // An empty store directory (say, a mount point prepared for the store) holds
                // no store yet.
                let store_has_files = std::fs::read_dir(self.store_dir())
                    .map(|mut entries| entries.next().is_some())
                    .unwrap_or(false);
                if store_has_files {
                    bail!(
                        "data directory {} has a store but no {IDENTITY_FILE}",
                        self.path.display()
                    );
                }
                let identity = Identity {
                    format: IDENTITY_FORMAT,
                    node_id,
                    cluster_id: None,
                    bootstrapped: false,
                };
                self.save_identity(&identity)?;
                Ok(identity)
            }
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        let path = self.path.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(identity)?;
        write_file_durably(&path, &bytes, 0o644)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The node's ed25519 identity key, generated at first start.
    pub fn node_key(&self) -> anyhow::Result<SigningKey> {
        let path = self.path.join(NODE_KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .with_context(|| format!("{} is not hex", path.display()))?;
                let seed: [u8; 32] = bytes.try_into().map_err(|_| {
                    anyhow::anyhow!("{} does not hold a 32-byte key", path.display())
                })?;
                Ok(SigningKey::from_bytes(&seed))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                write_file_durably(
                    &path,
                    format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
                    0o600,
                )
                .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(key)
            }
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn read_admin_key(&self) -> anyhow::Result<Option<String>> {
        let path = self.admin_key_path();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn write_admin_key(&self, key: &str) -> anyhow::Result<()> {
        let path = self.admin_key_path();
        write_file_durably(&path, format!("{key}\n").as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
