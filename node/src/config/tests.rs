use super::*;

const FILE: &str = "/etc/tandem/test.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new(FILE))
}

/// Parses `text`, expects an `Invalid` error and returns its key.
fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, path, .. }) => {
            assert_eq!(path, Path::new(FILE));
            key
        }
        other => panic!("expected Invalid for {text:?}, got {other:?}"),
    }
}

/// Parses `text`, expects a `Parse` error and returns its Display text.
fn parse_error(text: &str) -> String {
    match parse(text) {
        Err(e @ ConfigError::Parse { .. }) => e.to_string(),
        other => panic!("expected Parse for {text:?}, got {other:?}"),
    }
}

const FULL: &str = r#"
[node]
id = 2
name = "east"
role = "data"
data_dir = "/var/lib/tandem"

[cluster]
name = "pbx"
listen = "0.0.0.0:7100"
advertise = "10.0.0.2:7100"
heartbeat_ms = 50
election_timeout_min_ms = 800
election_timeout_max_ms = 1200
lease_ms = 400
snapshot_logs = 5000
cache_mb = 128
tls_dir = "/etc/tandem/tls"

[[cluster.peers]]
id = 1
addr = "10.0.0.1:7100"
api = "10.0.0.1:8443"

[[cluster.peers]]
id = 2
addr = "10.0.0.2:7100"
api = "10.0.0.2:8443"

[[cluster.peers]]
id = 3
addr = "[fd00::3]:7100"

[vip]
address = "10.0.0.100"
prefix = 16
interface = "eth1"
garp_count = 5
garp_interval_ms = 100

[api]
listen = "0.0.0.0:8443"
tls_cert = "/etc/tandem/api.crt"
tls_key = "/etc/tandem/api.key"
token_file = "/etc/tandem/admin.token"

[sip]
listen = "10.0.0.2:5080"
rtp_ports = "16384-32767"

[replication]
recording_bandwidth_kbps = 2048

[hooks]
on_master = "/usr/local/bin/on-master"
on_standby = "/usr/local/bin/on-standby"
on_fenced = "/usr/local/bin/on-fenced"
timeout_ms = 2000
"#;

#[test]
fn full_example_with_every_key_parses() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.node.id, 2);
    assert_eq!(c.node.name.as_deref(), Some("east"));
    assert_eq!(c.node.role, NodeRole::Data);
    assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/tandem"));
    assert_eq!(c.cluster.name, "pbx");
    assert_eq!(c.cluster.listen.to_string(), "0.0.0.0:7100");
    assert_eq!(c.advertise(), "10.0.0.2:7100");
    assert_eq!(c.cluster.heartbeat_ms, 50);
    assert_eq!(c.cluster.election_timeout_min_ms, 800);
    assert_eq!(c.cluster.election_timeout_max_ms, 1200);
    assert_eq!(c.cluster.lease_ms, 400);
    assert_eq!(c.cluster.snapshot_logs, 5000);
    assert_eq!(c.cluster.cache_mb, 128);
    assert_eq!(c.tls_dir(), PathBuf::from("/etc/tandem/tls"));
    assert_eq!(c.cluster.peers.len(), 3);
    assert_eq!(c.cluster.peers[2].api, None);
    assert_eq!(c.vip_address(), Some("10.0.0.100".parse().unwrap()));
    assert_eq!(c.vip_prefix(), Some(16));
    assert_eq!(c.vip.interface.as_deref(), Some("eth1"));
    assert_eq!(c.vip.garp_count, 5);
    assert_eq!(c.vip.garp_interval_ms, 100);
    assert_eq!(c.api.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(c.api.tls_cert, Some(PathBuf::from("/etc/tandem/api.crt")));
    assert_eq!(c.api.tls_key, Some(PathBuf::from("/etc/tandem/api.key")));
    assert_eq!(c.token_file(), PathBuf::from("/etc/tandem/admin.token"));
    assert_eq!(c.sip.listen.to_string(), "10.0.0.2:5080");
    assert_eq!((c.sip.rtp_ports.low, c.sip.rtp_ports.high), (16384, 32767));
    assert_eq!(c.replication.recording_bandwidth_kbps, 2048);
    assert_eq!(
        c.hooks.on_master,
        Some(PathBuf::from("/usr/local/bin/on-master"))
    );
    assert_eq!(
        c.hooks.on_standby,
        Some(PathBuf::from("/usr/local/bin/on-standby"))
    );
    assert_eq!(
        c.hooks.on_fenced,
        Some(PathBuf::from("/usr/local/bin/on-fenced"))
    );
    assert_eq!(c.hooks.timeout_ms, 2000);
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default_single_node());
    assert_eq!(c.node.id, 1);
    assert_eq!(c.node.name.as_deref(), Some("node-1"));
    assert_eq!(c.node.role, NodeRole::Data);
    assert_eq!(c.node.data_dir, PathBuf::from("./tandem-data"));
    assert_eq!(c.cluster.name, "tandem");
    assert!(c.cluster.peers.is_empty());
    assert_eq!(c.cluster.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.cluster.advertise.as_deref(), Some("127.0.0.1:7000"));
    assert_eq!(c.cluster.heartbeat_ms, 100);
    assert_eq!(c.cluster.election_timeout_min_ms, 1000);
    assert_eq!(c.cluster.election_timeout_max_ms, 1500);
    assert_eq!(c.cluster.lease_ms, 600);
    assert_eq!(c.cluster.snapshot_logs, 20_000);
    assert_eq!(c.cluster.cache_mb, 64);
    assert_eq!(c.tls_dir(), PathBuf::from("./tandem-data/tls"));
    assert_eq!(c.vip.address, None);
    assert_eq!(c.vip.prefix, None);
    assert_eq!(c.vip.interface, None);
    assert_eq!(c.vip.garp_count, 3);
    assert_eq!(c.vip.garp_interval_ms, 200);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.api.tls_cert, None);
    assert_eq!(c.api.tls_key, None);
    assert_eq!(c.token_file(), PathBuf::from("./tandem-data/admin.token"));
    assert_eq!(c.sip.listen.to_string(), "0.0.0.0:5060");
    assert_eq!((c.sip.rtp_ports.low, c.sip.rtp_ports.high), (10000, 20000));
    assert_eq!(c.replication.recording_bandwidth_kbps, 0);
    assert_eq!(c.hooks, HooksSection::default());
    assert_eq!(c.hooks.timeout_ms, 5000);
    assert_eq!(
        c.voters(),
        vec![PeerEntry {
            id: 1,
            addr: "127.0.0.1:7000".into(),
            api: Some("127.0.0.1:8080".into()),
        }]
    );
}

#[test]
fn default_single_node_is_valid_and_round_trips() {
    let c = Config::default_single_node();
    c.validate(Path::new(DEFAULTS_PATH)).unwrap();
    let text = toml::to_string(&c).unwrap();
    assert_eq!(parse(&text).unwrap(), c);
    let full = parse(FULL).unwrap();
    assert_eq!(parse(&toml::to_string(&full).unwrap()).unwrap(), full);
}

#[test]
fn derived_defaults_follow_other_keys() {
    let c = parse(
        "[node]\nid = 7\ndata_dir = \"/srv/t\"\n[cluster]\nlisten = \"10.1.1.1:7000\"\n\
         [vip]\naddress = \"fd00::10\"\n",
    )
    .unwrap();
    assert_eq!(c.node_name(), "node-7");
    assert_eq!(c.advertise(), "10.1.1.1:7000");
    assert_eq!(c.tls_dir(), PathBuf::from("/srv/t/tls"));
    assert_eq!(c.token_file(), PathBuf::from("/srv/t/admin.token"));
    assert_eq!(c.vip.prefix, Some(64));
    let v4 = parse("[vip]\naddress = \"10.0.0.100\"\n").unwrap();
    assert_eq!(v4.vip.prefix, Some(24));
    // Accessors work on unresolved configurations too.
    let mut raw = Config::default();
    raw.node.data_dir = PathBuf::from("/x");
    assert_eq!(raw.tls_dir(), PathBuf::from("/x/tls"));
    assert_eq!(raw.token_file(), PathBuf::from("/x/admin.token"));
    assert_eq!(raw.node_name(), "node-1");
}

#[test]
fn voters_merge_self_dedupe_and_sort() {
    let without_self = parse(
        "[node]\nid = 2\n[cluster]\nadvertise = \"10.0.0.2:7000\"\nlisten = \"0.0.0.0:7000\"\n\
         [[cluster.peers]]\nid = 3\naddr = \"10.0.0.3:7000\"\n\
         [[cluster.peers]]\nid = 1\naddr = \"10.0.0.1:7000\"\napi = \"10.0.0.1:8080\"\n\
         [api]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let v = without_self.voters();
    assert_eq!(
        v.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{v:?}"
    );
    assert_eq!(v[0].api.as_deref(), Some("10.0.0.1:8080"));
    assert_eq!(v[1].addr, "10.0.0.2:7000");
    assert_eq!(v[1].api, None, "wildcard api.listen is not advertised");

    let with_self = parse(
        "[node]\nid = 2\n[cluster]\nadvertise = \"10.0.0.2:7000\"\n\
         [[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\napi = \"10.0.0.2:8443\"\n\
         [[cluster.peers]]\nid = 1\naddr = \"10.0.0.1:7000\"\n",
    )
    .unwrap();
    let v = with_self.voters();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].id, 2);
    assert_eq!(v[1].api.as_deref(), Some("10.0.0.2:8443"));
}

#[test]
fn invalid_node_values() {
    assert_eq!(invalid_key("[node]\nid = 0\n"), "node.id");
    assert_eq!(invalid_key("[node]\nname = \"\"\n"), "node.name");
    assert_eq!(invalid_key("[node]\ndata_dir = \"\"\n"), "node.data_dir");
    assert_eq!(invalid_key("[cluster]\nname = \" \"\n"), "cluster.name");
    assert_eq!(invalid_key("[cluster]\ncache_mb = 0\n"), "cluster.cache_mb");
    assert_eq!(invalid_key("[vip]\ngarp_count = 0\n"), "vip.garp_count");
    assert_eq!(invalid_key("[hooks]\ntimeout_ms = 0\n"), "hooks.timeout_ms");
}

#[test]
fn invalid_timer_order_names_the_pair() {
    let cases = [
        ("heartbeat_ms = 0", "cluster.heartbeat_ms"),
        ("heartbeat_ms = 600", "cluster.heartbeat_ms"),
        ("heartbeat_ms = 700", "cluster.heartbeat_ms"),
        ("lease_ms = 1000", "cluster.lease_ms"),
        ("lease_ms = 2000", "cluster.lease_ms"),
        (
            "election_timeout_min_ms = 2000\nelection_timeout_max_ms = 1500",
            "cluster.election_timeout_min_ms",
        ),
    ];
    for (body, key) in cases {
        assert_eq!(invalid_key(&format!("[cluster]\n{body}\n")), key, "{body}");
    }
    // min == max is allowed.
    parse("[cluster]\nelection_timeout_min_ms = 1500\n").unwrap();

    let err = parse("[cluster]\nlease_ms = 1200\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.lease_ms (1200)"), "{err}");
    assert!(
        err.contains("cluster.election_timeout_min_ms (1000)"),
        "{err}"
    );
    assert!(err.contains("lower cluster.lease_ms to 600"), "{err}");
    assert!(
        err.contains("raise cluster.election_timeout_min_ms to 2000"),
        "{err}"
    );
}

#[test]
fn invalid_addresses_name_the_key() {
    let cases = [
        ("[cluster]\nlisten = \"localhost\"\n", "cluster.listen"),
        ("[cluster]\nadvertise = \"10.0.0.1\"\n", "cluster.advertise"),
        (
            "[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n\
             [[cluster.peers]]\nid = 3\naddr = \"10.0.0.3:7000\"\n\
             [[cluster.peers]]\nid = 4\naddr = \"node4:7000\"\n",
            "cluster.peers[2].addr",
        ),
        (
            "[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\napi = \"10.0.0.2\"\n",
            "cluster.peers[0].api",
        ),
        (
            "[[cluster.peers]]\nid = 2\naddr = \"0.0.0.0:7000\"\n",
            "cluster.peers[0].addr",
        ),
        ("[api]\nlisten = \"8080\"\n", "api.listen"),
        ("[sip]\nlisten = \"*:5060\"\n", "sip.listen"),
    ];
    for (text, key) in cases {
        assert_eq!(invalid_key(text), key, "{text}");
    }
    let err = parse("[cluster]\nlisten = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected host:port like 10.0.0.1:7000"),
        "{err}"
    );
    let err = parse("[[cluster.peers]]\nid = 2\naddr = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected host:port like 10.0.0.2:7000"),
        "{err}"
    );
}

#[test]
fn invalid_peer_lists() {
    // Duplicate ids.
    assert_eq!(
        invalid_key(
            "[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n\
             [[cluster.peers]]\nid = 2\naddr = \"10.0.0.3:7000\"\n"
        ),
        "cluster.peers[1].id"
    );
    // Peer id 0.
    assert_eq!(
        invalid_key("[[cluster.peers]]\nid = 0\naddr = \"10.0.0.2:7000\"\n"),
        "cluster.peers[0].id"
    );
    // This node's entry with an addr other than advertise.
    assert_eq!(
        invalid_key(
            "[node]\nid = 1\n[cluster]\nadvertise = \"10.0.0.1:7000\"\n\
             [[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n\
             [[cluster.peers]]\nid = 1\naddr = \"10.0.0.9:7000\"\n"
        ),
        "cluster.peers[1].addr"
    );
    // Same node in canonical and non-canonical spelling is fine.
    parse(
        "[cluster]\nadvertise = \"[fd00::1]:7000\"\n\
         [[cluster.peers]]\nid = 1\naddr = \"[fd00:0::1]:7000\"\n",
    )
    .unwrap();
    // Two ids sharing one address.
    assert_eq!(
        invalid_key(
            "[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n\
             [[cluster.peers]]\nid = 3\naddr = \"10.0.0.2:7000\"\n"
        ),
        "cluster.peers[1].addr"
    );
    // Another id at this node's own address.
    assert_eq!(
        invalid_key("[[cluster.peers]]\nid = 2\naddr = \"127.0.0.1:7000\"\n"),
        "cluster.peers[0].addr"
    );
    // A multi-node cluster cannot advertise a wildcard address.
    let err = parse(
        "[cluster]\nlisten = \"0.0.0.0:7000\"\n\
         [[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n",
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("cluster.advertise"));
    assert!(
        err.to_string().contains("defaults to cluster.listen"),
        "{err}"
    );
    // ...but a single node may listen on one.
    parse("[cluster]\nlisten = \"0.0.0.0:7000\"\n").unwrap();
}

#[test]
fn invalid_rtp_ports() {
    for bad in [
        "10000",
        "a-b",
        "10000-",
        "1000-2000",
        "10000-70000",
        "20000-10000",
        "10000-10000",
        "10001-20000",
    ] {
        assert_eq!(
            invalid_key(&format!("[sip]\nrtp_ports = \"{bad}\"\n")),
            "sip.rtp_ports",
            "{bad}"
        );
    }
    let c = parse("[sip]\nrtp_ports = \"1024-65535\"\n").unwrap();
    assert_eq!((c.sip.rtp_ports.low, c.sip.rtp_ports.high), (1024, 65535));
    let err = parse("[sip]\nrtp_ports = \"10001-20000\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"10000-20000\""), "{err}");
}

#[test]
fn invalid_tls_pair() {
    assert_eq!(invalid_key("[api]\ntls_cert = \"/c.pem\"\n"), "api.tls_key");
    assert_eq!(invalid_key("[api]\ntls_key = \"/k.pem\"\n"), "api.tls_cert");
}

#[test]
fn invalid_vip() {
    assert_eq!(
        invalid_key("[vip]\naddress = \"10.0.0.100\"\nprefix = 33\n"),
        "vip.prefix"
    );
    parse("[vip]\naddress = \"10.0.0.100\"\nprefix = 32\n").unwrap();
    assert_eq!(
        invalid_key("[vip]\naddress = \"fd00::100\"\nprefix = 129\n"),
        "vip.prefix"
    );
    parse("[vip]\naddress = \"fd00::100\"\nprefix = 128\n").unwrap();
    assert_eq!(
        invalid_key("[vip]\naddress = \"10.0.0.100/24\"\n"),
        "vip.address"
    );
    assert_eq!(invalid_key("[vip]\naddress = \"0.0.0.0\"\n"), "vip.address");
    assert_eq!(
        invalid_key("[node]\nrole = \"witness\"\n[vip]\naddress = \"10.0.0.100\"\n"),
        "vip.address"
    );
    let witness = parse("[node]\nrole = \"witness\"\n[vip]\ngarp_count = 1\n").unwrap();
    assert_eq!(witness.node.role, NodeRole::Witness);
}

#[test]
fn invalid_display_names_file_key_and_fix() {
    let err = parse("[node]\nid = 0\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("/etc/tandem/test.toml: node.id: must be at least 1"),
        "{text}"
    );
    assert!(text.contains(" — fix: set node.id"), "{text}");
    assert_eq!(err.path(), Path::new(FILE));

    let mut c = Config::default_single_node();
    c.cluster.cache_mb = 0;
    let text = c
        .validate(Path::new(DEFAULTS_PATH))
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("<defaults>: cluster.cache_mb: "), "{text}");
}

#[test]
fn unknown_key_is_a_parse_error_naming_it() {
    let text = parse_error("[node]\ncolour = \"red\"\n");
    assert!(text.starts_with("/etc/tandem/test.toml: "), "{text}");
    assert!(text.contains("colour"), "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("fix: remove the key"), "{text}");

    let text = parse_error("[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\nport = 1\n");
    assert!(text.contains("port"), "{text}");
}

#[test]
fn unknown_section_is_a_parse_error_naming_it() {
    let text = parse_error("[alarms]\nemail = \"ops@example.com\"\n");
    assert!(text.starts_with("/etc/tandem/test.toml: "), "{text}");
    assert!(text.contains("alarms"), "{text}");
}

#[test]
fn wrong_type_is_a_parse_error_naming_the_key() {
    let text = parse_error("[cluster]\nheartbeat_ms = \"fast\"\n");
    assert!(text.contains("heartbeat_ms"), "{text}");
    assert!(text.contains("fix: give the key a value"), "{text}");
    let text = parse_error("[node]\nrole = \"master\"\n");
    assert!(text.contains("role"), "{text}");
    assert!(text.contains("witness"), "{text}");
    let text = parse_error("[vip]\nprefix = 300\n");
    assert!(text.contains("prefix"), "{text}");
    let text = parse_error("[[cluster.peers]]\naddr = \"10.0.0.2:7000\"\n");
    assert!(text.contains("id"), "{text}");
    let text = parse_error("[node\n");
    assert!(text.contains("fix: correct the TOML syntax"), "{text}");
}

#[test]
fn parse_errors_carry_the_dotted_key_when_known() {
    let cases = [
        ("[node]\ncolour = \"red\"\n", "node.colour: "),
        ("[alarms]\n", "alarms: "),
        ("[node] # this node\nid = \"one\"\n", "node.id: "),
        (
            "cluster.heartbeat_ms = \"fast\"\n",
            "cluster.heartbeat_ms: ",
        ),
        (
            "[[cluster.peers]]\nid = 2\naddr = \"10.0.0.2:7000\"\n\
             [[cluster.peers]]\nid = 3\naddr = \"10.0.0.3:7000\"\nport = 1\n",
            "cluster.peers[1].port: ",
        ),
    ];
    for (text, prefix) in cases {
        match parse(text) {
            Err(ConfigError::Parse { message, .. }) => {
                assert!(message.starts_with(prefix), "{prefix} / {message}")
            }
            other => panic!("expected Parse for {text:?}, got {other:?}"),
        }
    }
    // Inline tables: no guessing, toml's message alone.
    let text = parse_error("[cluster]\npeers = [{ id = 2, addr = \"10.0.0.2:7000\", x = 1 }]\n");
    assert!(text.contains(": TOML parse error"), "{text}");
    assert!(text.contains("unknown field `x`"), "{text}");
}

const APPLIANCE: &str = include_str!("../../../appliance/tandem.toml");

#[test]
fn appliance_example_parses_to_defaults() {
    let c = Config::from_toml_str(APPLIANCE, Path::new("appliance/tandem.toml")).unwrap();
    assert_eq!(c, Config::default_single_node());
}

/// Uncommenting every commented key of the example must give a valid file
/// whose values are the documented defaults (plus the example peers, VIP,
/// TLS files and hooks).
#[test]
fn appliance_example_uncommented_is_valid_and_documents_defaults() {
    let uncommented: String = APPLIANCE
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '[') => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let c = Config::from_toml_str(&uncommented, Path::new("uncommented")).unwrap();

    let mut expected = Config::default_single_node();
    expected.cluster.peers = vec![
        PeerEntry {
            id: 2,
            addr: "10.0.0.2:7000".into(),
            api: Some("10.0.0.2:8080".into()),
        },
        PeerEntry {
            id: 3,
            addr: "10.0.0.3:7000".into(),
            api: None,
        },
    ];
    expected.vip.address = Some("10.0.0.100".into());
    expected.vip.prefix = Some(24);
    expected.vip.interface = Some("eth0".into());
    expected.api.tls_cert = Some("/etc/tandem/api-cert.pem".into());
    expected.api.tls_key = Some("/etc/tandem/api-key.pem".into());
    expected.hooks.on_master = Some("/etc/tandem/hooks/on-master".into());
    expected.hooks.on_standby = Some("/etc/tandem/hooks/on-standby".into());
    expected.hooks.on_fenced = Some("/etc/tandem/hooks/on-fenced".into());
    assert_eq!(c, expected);

    // Every field of every section appears in the example.
    let all = toml::to_string(&c).unwrap();
    for line in all.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                APPLIANCE.contains(&format!("#{key} = ")),
                "key {key} is not documented in appliance/tandem.toml"
            );
        }
    }
}

#[test]
fn load_reads_the_file_and_reports_read_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, "[node]\nid = 4\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.node.id, 4);
    assert_eq!(c.node_name(), "node-4");

    std::fs::write(&path, "[node]\nid = 0\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.key(), Some("node.id"));
    assert!(err.to_string().starts_with(&path.display().to_string()));

    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn digest_algorithms_are_typed_and_checked_as_the_file_is_read() {
    let c = parse("[sip]\ndigest_algorithms = [\"MD5\"]\n").unwrap();
    assert_eq!(c.sip.digest_algorithms, vec![Algorithm::Md5]);
    for bad in ["[]", "[\"SHA-1\"]", "[\"MD5\", \"sha512\"]"] {
        let text = format!("[sip]\ndigest_algorithms = {bad}\n");
        match parse(&text) {
            Err(ConfigError::Invalid { key, fix, .. }) => {
                assert_eq!(key, "sip.digest_algorithms", "{bad}");
                assert!(fix.contains("MD5"), "{bad}: {fix}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn typed_fields_serialize_back_to_what_an_operator_writes() {
    let c = parse(
        "[sip]\nlisten = \"10.0.0.2:5080\"\nrtp_ports = \"16384-32767\"\n\
         digest_algorithms = [\"SHA-256\"]\n",
    )
    .unwrap();
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("rtp_ports = \"16384-32767\""), "{text}");
    assert!(text.contains("digest_algorithms = [\"SHA-256\"]"), "{text}");
    assert!(text.contains("listen = \"10.0.0.2:5080\""), "{text}");
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
}
