//! `tandem recording list|get|verify|upload`.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::{connect, print, RecordingCmd};

#[derive(Serialize)]
struct Downloaded {
    id: String,
    bytes: u64,
    out: PathBuf,
}

pub async fn run(action: RecordingCmd) -> anyhow::Result<()> {
    match action {
        RecordingCmd::List {
            common,
            pending,
            limit,
            after,
        } => {
            let (_, c) = connect(&common)?;
            let mut q = vec![("limit", limit.to_string())];
            if pending {
                q.push(("state", "pending".into()));
            }
            if let Some(a) = after {
                q.push(("after", a));
            }
            let list = c.recordings(&tandem_api::encode_query(&q)).await?;
            print(&common, &list, |l| {
                let mut out = String::new();
                for r in &l.recordings {
                    out.push_str(&format!(
                        "{}  {:>10} B  {:<7}  holders {:?}  call {}  {}\n",
                        r.id,
                        r.size,
                        r.state,
                        r.holders,
                        r.call_id,
                        r.created.as_deref().unwrap_or(""),
                    ));
                }
                if let Some(s) = &l.sync {
                    out.push_str(&format!(
                        "this node still has to fetch {} recordings ({} bytes)\n",
                        s.files, s.bytes
                    ));
                }
                if let Some(n) = &l.next_after {
                    out.push_str(&format!("more: --after {n}\n"));
                }
                out.trim_end().to_string()
            });
        }
        RecordingCmd::Get { common, id, out } => {
            let (_, c) = connect(&common)?;
            let out = out.unwrap_or_else(|| PathBuf::from(&id));
            let tmp = out.with_extension("download");
            let bytes = {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?,
                );
                let path = format!("/api/v1/recordings/{}", tandem_api::urlencode(&id));
                let r = c.download(&path, &mut f).await;
                if r.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                r?
            };
            std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
            let v = Downloaded { id, bytes, out };
            print(&common, &v, |v| {
                format!("{} bytes written to {}", v.bytes, v.out.display())
            });
        }
        RecordingCmd::Verify { common, id } => {
            let (_, c) = connect(&common)?;
            let v = c.recordings_verify(id).await?;
            print(&common, &v, |v| {
                let bad: Vec<String> = v
                    .bad
                    .iter()
                    .map(|b| format!("{} ({})", b.id, b.error))
                    .collect();
                format!(
                    "node {}: {} checked, {} ok, bad [{}], missing [{}]",
                    v.node,
                    v.checked,
                    v.ok,
                    bad.join(", "),
                    v.missing.join(", ")
                )
            });
            if !v.bad.is_empty() {
                anyhow::bail!("some recordings failed their sha256 check (a good copy is fetched from another node)");
            }
        }
        RecordingCmd::Upload {
            common,
            file,
            id,
            call_id,
            codec,
            duration_ms,
            wait_s,
        } => {
            let (_, c) = connect(&common)?;
            let mut headers = Vec::new();
            for (k, v) in [
                ("x-recording-id", id),
                ("x-call-id", call_id),
                ("x-codec", codec),
                ("x-duration-ms", duration_ms.map(|d| d.to_string())),
            ] {
                if let Some(v) = v {
                    headers.push((k, v));
                }
            }
            let (status, v) = c
                .upload(
                    &format!("/api/v1/recordings?wait_s={wait_s}"),
                    &file,
                    &headers,
                )
                .await?;
            print(&common, &v, |v| {
                format!(
                    "recording {} {} ({} bytes, sha256 {}), held by nodes {:?}{}",
                    v.id,
                    v.state,
                    v.size,
                    v.sha256,
                    v.holders,
                    if status == 202 {
                        "; the copy to a second node goes on (see `tandem status`)"
                    } else {
                        ""
                    }
                )
            });
        }
    }
    Ok(())
}
