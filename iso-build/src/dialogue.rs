//! The console dialogue used when no answer file is found: asks the essentials
//! with defaults, builds an answer file from the replies and validates it with
//! the same rules as a written one.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::answer::{
    self, Answer, RawAnswer, RawCluster, RawDisk, RawInterface, RawNetwork, RawNode, RawPeer,
    RawSystem, RawVip,
};
use crate::error::{io, Error, Result};

/// What the dialogue offers as choices.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Disks: (path, size in bytes, model).
    pub disks: Vec<(String, u64, String)>,
    /// MAC addresses of the network interfaces.
    pub macs: Vec<String>,
}

struct Io<'a, R: BufRead, W: Write> {
    input: &'a mut R,
    out: &'a mut W,
}

impl<R: BufRead, W: Write> Io<'_, R, W> {
    fn ask(&mut self, q: &str, default: &str) -> Result<String> {
        if default.is_empty() {
            write!(self.out, "{q}: ").map_err(io("writing to the console"))?;
        } else {
            write!(self.out, "{q} [{default}]: ").map_err(io("writing to the console"))?;
        }
        self.out.flush().map_err(io("writing to the console"))?;
        let mut line = String::new();
        let n = self
            .input
            .read_line(&mut line)
            .map_err(io("reading the console"))?;
        if n == 0 {
            return Err(Error::Stage {
                stage: "dialogue".into(),
                message: "console input closed".into(),
            });
        }
        let l = line.trim();
        Ok(if l.is_empty() {
            default.to_string()
        } else {
            l.to_string()
        })
    }

    fn say(&mut self, s: &str) -> Result<()> {
        writeln!(self.out, "{s}").map_err(io("writing to the console"))
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty() && s != "none").then_some(s)
}

/// Runs the dialogue; returns the answer file text and the validated answer.
pub fn dialogue<R: BufRead, W: Write>(
    input: &mut R,
    out: &mut W,
    m: &Machine,
) -> Result<(String, Answer)> {
    let mut c = Io { input, out };
    c.say("\nNo answer file found. Answer a few questions (Enter keeps the [default]).")?;
    for attempt in 1..=5 {
        c.say("Disks:")?;
        for (p, s, model) in &m.disks {
            c.say(&format!("  {p}  {} GB  {model}", s / 1_000_000_000))?;
        }
        let disk = c.ask(
            "Disk to ERASE and install to",
            m.disks.first().map(|d| d.0.as_str()).unwrap_or(""),
        )?;
        let hostname = c.ask("Host name", "tandem-1")?;
        c.say(&format!("Network interfaces (MAC): {}", m.macs.join(", ")))?;
        let mac = c.ask(
            "Interface (MAC)",
            m.macs.first().map(String::as_str).unwrap_or(""),
        )?;
        let addr = c.ask(
            "Address: \"dhcp\" or address/prefix (e.g. 192.0.2.10/24)",
            "dhcp",
        )?;
        let mut iface = RawInterface {
            mac: Some(mac),
            ..Default::default()
        };
        let mut listen_default = "0.0.0.0:7000".to_string();
        if addr == "dhcp" {
            iface.dhcp = Some(true);
        } else {
            if let Some((ip, _)) = addr.split_once('/') {
                listen_default = format!("{ip}:7000");
            }
            iface.address = Some(addr);
            iface.gateway = opt(c.ask("Gateway (or none)", "none")?);
            iface.dns = opt(c.ask("DNS server (or none)", "none")?).map(|d| vec![d]);
        }
        let id = c.ask("Node id", "1")?;
        let role = c.ask("Role (data/witness)", "data")?;
        let mode = c.ask("Create a new cluster (init) or join one (join)", "init")?;
        let listen = c.ask(
            "Cluster (peer) address of this node, ip:port",
            &listen_default,
        )?;
        let mut cluster = RawCluster {
            mode: Some(mode.clone()),
            listen: Some(listen.clone()),
            ..Default::default()
        };
        if listen.starts_with("0.0.0.0") {
            cluster.advertise = None;
        }
        if mode == "join" {
            let first = c.ask("Peer address of the first node, ip:port", "")?;
            cluster.join_address = Some(first.clone());
            cluster.join_token = opt(c.ask("Join token (printed by the first node)", "")?);
            cluster.peers = vec![RawPeer {
                id: Some(1),
                addr: Some(first),
                api: None,
            }];
        }
        let vip = opt(c.ask("Floating service address (VIP), or none", "none")?);
        let timezone = c.ask("Time zone", "UTC")?;
        let raw = RawAnswer {
            disk: Some(RawDisk {
                path: Some(disk.clone()),
                ..Default::default()
            }),
            system: Some(RawSystem {
                hostname: Some(hostname),
                timezone: Some(timezone),
                finish: Some("reboot".into()),
            }),
            network: Some(RawNetwork {
                interface: vec![iface],
            }),
            node: Some(RawNode {
                id: id.parse().ok().or(Some(0)),
                role: Some(role),
            }),
            cluster: Some(cluster),
            vip: vip.map(|a| RawVip {
                address: Some(a),
                prefix: None,
            }),
            ..Default::default()
        };
        match answer::validate(&raw) {
            Err(problems) => {
                c.say(&format!(
                    "\nThese answers do not work:\n{problems}\nPlease try again ({attempt}/5).\n"
                ))?;
            }
            Ok(a) => {
                let text = toml::to_string(&raw).expect("answer serializes");
                c.say(&format!("\nSummary:\n{text}"))?;
                let yes = c.ask(&format!("Type yes to ERASE {disk} and install"), "no")?;
                if yes == "yes" {
                    return Ok((text, a));
                }
                c.say("Not confirmed; starting over.\n")?;
            }
        }
    }
    Err(Error::Stage {
        stage: "dialogue".into(),
        message: "no valid answers after 5 attempts".into(),
    })
}

/// Runs the dialogue on a terminal device (e.g. /dev/tty1) with this machine's disks and NICs.
pub fn run_on_tty(tty: &Path) -> Result<Answer> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tty)
        .map_err(io(format!("opening {}", tty.display())))?;
    let mut out = f.try_clone().map_err(io("console"))?;
    let mut input = BufReader::new(f);
    let mut m = Machine {
        macs: crate::install::present_macs(),
        ..Default::default()
    };
    if let Ok(o) = std::process::Command::new("lsblk")
        .args(["-J", "-b", "-d", "-o", "PATH,SIZE,MODEL,TYPE,RO"])
        .output()
    {
        if let Ok(d) = crate::install::parse_lsblk(&String::from_utf8_lossy(&o.stdout)) {
            m.disks = d
                .into_iter()
                .filter(|d| d.kind == "disk" && !d.ro)
                .map(|d| (d.path, d.size, d.model.unwrap_or_default()))
                .collect();
        }
    }
    let (text, a) = dialogue(&mut input, &mut out, &m)?;
    let _ = std::fs::write("/run/tandem-answer.toml", text);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{Bootstrap, DiskChoice};

    fn machine() -> Machine {
        Machine {
            disks: vec![("/dev/vda".into(), 8_000_000_000, "".into())],
            macs: vec!["52:54:00:00:00:01".into()],
        }
    }

    #[test]
    fn defaults_give_a_dhcp_init_node() {
        // disk, host, mac, addr, id, role, mode, listen, vip, tz, confirm
        let mut input = "\n\n\n\n\n\n\n\n\n\nyes\n".as_bytes();
        let mut out = Vec::new();
        let (_, a) = dialogue(&mut input, &mut out, &machine()).unwrap();
        assert_eq!(a.disk, DiskChoice::Path("/dev/vda".into()));
        assert_eq!(a.hostname, "tandem-1");
        assert_eq!(a.bootstrap, Bootstrap::Init);
        assert_eq!(a.listen, "0.0.0.0:7000".parse().unwrap());
        let shown = String::from_utf8(out).unwrap();
        assert!(
            shown.contains("Disk to ERASE and install to [/dev/vda]"),
            "{shown}"
        );
    }

    #[test]
    fn bad_reply_is_explained_and_asked_again() {
        // First round: bad address; second round: static join node.
        let mut input = "\n\n\n198.18.0.300/24\nnone\nnone\n\n\n\n\n\n\n\
                         \nnode-b\n\n198.18.0.2/24\nnone\nnone\n2\n\njoin\n\n198.18.0.1:7000\nTOKEN123\nnone\n\nyes\n"
            .as_bytes();
        let mut out = Vec::new();
        let (text, a) = dialogue(&mut input, &mut out, &machine()).unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("network.interface[0].address"), "{shown}");
        assert_eq!(a.node_id, 2);
        assert_eq!(
            a.bootstrap,
            Bootstrap::Join {
                address: "198.18.0.1:7000".parse().unwrap(),
                token: "TOKEN123".into()
            }
        );
        assert!(answer::parse(&text).is_ok(), "{text}");
    }

    #[test]
    fn not_confirming_starts_over() {
        let mut input = "\n\n\n\n\n\n\n\n\n\nno\n".as_bytes();
        let mut out = Vec::new();
        assert!(dialogue(&mut input, &mut out, &machine()).is_err());
        assert!(String::from_utf8(out).unwrap().contains("starting over"));
    }
}
