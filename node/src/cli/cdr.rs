//! `tandem cdr add|query|export`.

use anyhow::Context;
use serde::Serialize;

use super::{connect, print, CdrCmd, CdrFilter};

fn filter(f: &CdrFilter, limit: Option<usize>, cursor: Option<String>) -> tandem_api::CdrFilter {
    tandem_api::CdrFilter {
        from: f.from.clone(),
        to: f.to.clone(),
        caller: f.caller.clone(),
        callee: f.callee.clone(),
        strong: f.strong,
        limit,
        cursor,
    }
}

#[derive(Serialize)]
struct Exported {
    bytes: u64,
    out: Option<std::path::PathBuf>,
}

pub async fn run(action: CdrCmd) -> anyhow::Result<()> {
    match action {
        CdrCmd::Add { common, file } => {
            let (_, c) = connect(&common)?;
            let body = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let v = c.cdrs_add_raw(body).await?;
            print(&common, &v, |v| {
                format!(
                    "{} inserted, {} duplicates (log index {})",
                    v.inserted, v.duplicates, v.index
                )
            });
        }
        CdrCmd::Query {
            common,
            filter: f,
            limit,
            cursor,
        } => {
            let (_, c) = connect(&common)?;
            let page = c.cdrs_query(&filter(&f, Some(limit), cursor)).await?;
            print(&common, &page, |p| {
                let mut s = String::new();
                for r in &p.cdrs {
                    s.push_str(&format!(
                        "{}  {} → {}  {}  {}s  {}\n",
                        r.start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                        r.caller,
                        r.callee,
                        r.disposition.as_str(),
                        r.billsec,
                        r.id
                    ));
                }
                s.push_str(&format!("{} rows", p.count));
                if let Some(n) = &p.next_cursor {
                    s.push_str(&format!("; next page: --cursor {n}"));
                }
                s
            });
        }
        CdrCmd::Export {
            common,
            filter: f,
            limit,
            out,
        } => {
            let (_, c) = connect(&common)?;
            let q = filter(&f, limit, None);
            let bytes = match &out {
                Some(p) => {
                    let mut w = std::io::BufWriter::new(
                        std::fs::File::create(p)
                            .with_context(|| format!("creating {}", p.display()))?,
                    );
                    c.cdrs_export(&q, &mut w).await?
                }
                None => {
                    c.cdrs_export(&q, &mut std::io::BufWriter::new(std::io::stdout()))
                        .await?
                }
            };
            if out.is_some() {
                let v = Exported { bytes, out };
                print(&common, &v, |v| format!("{} bytes written", v.bytes));
            }
        }
    }
    Ok(())
}
