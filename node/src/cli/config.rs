//! `tandem config get|set|list|delete`: the replicated key/value settings.

use serde_json::Value;

use super::{connect, print, ConfigCmd};

pub async fn run(action: ConfigCmd) -> anyhow::Result<()> {
    match action {
        ConfigCmd::Get { common, key } => {
            let (_, c) = connect(&common)?;
            let e = c.config_get(&key).await?;
            print(&common, &e, |e| {
                format!("{} = {} (version {})", e.key, e.value, e.version)
            });
        }
        ConfigCmd::Set { common, key, value } => {
            let (_, c) = connect(&common)?;
            let parsed: Value = serde_json::from_str(&value).unwrap_or(Value::String(value));
            let (_, e) = c.config_set(&key, &parsed).await?;
            print(&common, &e, |e| {
                format!("{} = {} (version {}, committed)", e.key, e.value, e.version)
            });
        }
        ConfigCmd::List { common, prefix } => {
            let (_, c) = connect(&common)?;
            let list = c.config_list(prefix.as_deref()).await?;
            print(&common, &list, |l| {
                l.config
                    .iter()
                    .map(|e| format!("{} = {} (version {})", e.key, e.value, e.version))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        ConfigCmd::Delete { common, key } => {
            let (_, c) = connect(&common)?;
            let d = c.config_delete(&key).await?;
            print(&common, &d, |d| {
                if d.deleted {
                    format!("{} deleted (version {}, committed)", d.key, d.version)
                } else {
                    format!("{} was not set", d.key)
                }
            });
        }
    }
    Ok(())
}
