use super::*;

const GOOD: &str = r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "device-secret-1"
dept = "water"
lat = 30.4212
lon = 120.3010

[[devices]]
id = "CAM-0001"
kind = "camera"
agent = "AG-0001"
gb_id = "33011000001320000001"

[[agents]]
id = "AG-0001"
secret = "agent-secret-1"

[[apps]]
id = "command-center"
secret = "cc-secret-123"
grants = ["feeds/#", "twin/#", "alerts/#"]

[[rules]]
id = "water-level-high"
kind = "water_level"
quantity = "water_level"
above = 3.0
clear_below = 2.8
for = "30s"
level = "orange"

[[rules]]
id = "water-rising-fast"
quantity = "water_level"
rise_per_hour = 0.5
level = "yellow"

[[rules]]
id = "device-silent"
kind = "*"
silent_for = "10m"
level = "blue"
"#;

#[test]
fn contract_example_loads() {
    let c = HubConfig::from_toml(GOOD).unwrap();
    assert_eq!(c.devices.len(), 2);
    assert_eq!(c.rules[0].hold, Some(HumanDuration::secs(30)));
    assert_eq!(c.hub.mqtt_listen, vec!["0.0.0.0:1883", "[::]:1883"]);
    assert_eq!(c.hub.http_listen, "0.0.0.0:8080");
    // An empty file is a valid config: the built-in defaults.
    assert_eq!(HubConfig::from_toml("").unwrap(), HubConfig::default());
}

fn err(extra: &str) -> String {
    HubConfig::from_toml(&format!("{GOOD}\n{extra}"))
        .unwrap_err()
        .to_string()
}

#[test]
fn every_problem_names_its_key() {
    let cases = [
        (
            "[[devices]]\nid = \"bad/id\"\nkind = \"manhole\"",
            "devices[2].id: `bad/id` has '/'",
        ),
        (
            "[[devices]]\nid = \"WL-0001\"\nkind = \"manhole\"",
            "devices[2].id: `WL-0001` is already used by devices[0]",
        ),
        (
            "[[devices]]\nid = \"hub\"\nkind = \"manhole\"",
            "devices[2].id: `hub` is reserved for the hub's own alerts",
        ),
        (
            "[[devices]]\nid = \"AG-0001\"\nkind = \"manhole\"",
            "devices[2].id: `AG-0001` is already used by agents[0]",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"Manhole\"",
            "devices[2].kind:",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\nagent = \"AG-9\"",
            "devices[2].agent: no agent `AG-9`",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\nlat = 91.0\nlon = 0.0",
            "devices[2].lat: 91 is not a latitude",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\nlat = 1.0",
            "devices[2].lat: lat and lon go together",
        ),
        (
            "[[devices]]\nid = \"C-2\"\nkind = \"camera\"",
            "devices[2].gb_id: a camera needs",
        ),
        (
            "[[devices]]\nid = \"C-2\"\nkind = \"camera\"\ngb_id = \"123\"",
            "devices[2].gb_id: must be 20 digits",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\nsecret = \"short\"",
            "devices[2].secret: must be at least 8",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\nsecret_hash = \"nope\"",
            "devices[2].secret_hash: not a PHC hash",
        ),
        (
            "[[devices]]\nid = \"M-1\"\nkind = \"manhole\"\ncolour = \"red\"",
            "devices[2].colour (line 49): unknown field `colour`",
        ),
        ("[[agents]]\nid = \"AG-2\"", "agents[1].secret: is required"),
        (
            "[[apps]]\nid = \"a2\"\nsecret = \"12345678\"\ngrants = [\"feeds/#/x\"]",
            "apps[1].grants[0]: `feeds/#/x`",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"",
            "rules[3] (r): needs a condition",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"\nabove = 1.0",
            "rules[3] (r).quantity: is required",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"\nabove = 1.0\nquantity = \"flux\"",
            "rules[3] (r).quantity: unknown quantity `flux`",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"\nabove = 1.0\nquantity = \"ph\"\nclear_below = 2.0",
            "rules[3] (r).clear_below: 2 is above",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"\nabove = 1.0\nsilent_for = \"1m\"\nquantity = \"ph\"",
            "rules[3] (r): has more than one condition",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"purple\"\nabove = 1.0\nquantity = \"ph\"",
            "rules[3].level (line",
        ),
        (
            "[[rules]]\nid = \"r\"\nlevel = \"red\"\nsilent_for = \"soon\"",
            "rules[3].silent_for (line",
        ),
        (
            "[[rules]]\nid = \"water-level-high\"\nlevel = \"red\"\nsilent_for = \"1m\"",
            "rules[3].id: `water-level-high` is already used",
        ),
        (
            "[hub]\nhttp_listen = \"localhost\"",
            "hub.http_listen: `localhost` is not an address",
        ),
        (
            "[hub]\nmqtt_listen = []",
            "hub.mqtt_listen: needs at least one",
        ),
        (
            "[hub]\nmqtt_tls_listen = [\"0.0.0.0:8883\"]",
            "hub.tls_cert: TLS listeners need tls_cert and tls_key",
        ),
        (
            "[hub]\nhttps_listen = \"0.0.0.0:8443\"",
            "hub.tls_cert: TLS listeners need",
        ),
        (
            "[hub]\nhttps_listen = \"0.0.0.0:8443\"\ntls_cert = \"a.crt\"",
            "hub.tls_key: tls_cert needs tls_key",
        ),
        (
            "[hub]\nmqtt_tls_listen = [\"host:8883\"]\ntls_cert = \"a\"\ntls_key = \"b\"",
            "hub.mqtt_tls_listen[0]: `host:8883` is not an address",
        ),
        (
            "[hub]\ntls_cert = \"a\"\ntls_key = \"b\"\nclient_ca = \"c\"",
            "hub.client_ca: client certificates need mqtt_tls_listen",
        ),
    ];
    for (extra, want) in cases {
        let got = err(extra);
        assert!(
            got.starts_with(want),
            "for {extra:?}\n got: {got}\nwant: {want}"
        );
        assert!(!got.contains('\n'), "{got}");
    }
}

#[test]
fn argon2_hashes_are_accepted() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"agent-secret", &salt)
        .unwrap()
        .to_string();
    let text = format!("[[agents]]\nid = \"AG-1\"\nsecret_hash = \"{hash}\"\n");
    assert!(HubConfig::from_toml(&text).is_ok());
}

#[test]
fn load_resolves_paths_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(
        &path,
        "[hub]\ndata_dir = \"store\"\nmqtt_tls_listen = [\"[::]:8883\"]\n\
         tls_cert = \"tls/hub.crt\"\ntls_key = \"/etc/hub.key\"\nclient_ca = \"tls/ca.crt\"\n",
    )
    .unwrap();
    let c = HubConfig::load(&path).unwrap();
    assert_eq!(c.hub.data_dir, dir.path().join("store"));
    assert_eq!(c.hub.tls_cert, Some(dir.path().join("tls/hub.crt")));
    assert_eq!(c.hub.tls_key, Some(PathBuf::from("/etc/hub.key")));
    assert_eq!(c.hub.client_ca, Some(dir.path().join("tls/ca.crt")));
    std::fs::write(&path, "[hub]\ndata_dir = 5\n").unwrap();
    let e = HubConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("hub.toml: hub.data_dir (line 2)"), "{e}");
    let e = HubConfig::load(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn client_quotas_have_defaults_and_map_onto_the_broker() {
    let c = HubConfig::from_toml("").unwrap();
    assert_eq!(c.hub.max_messages_per_s, 5_000);
    assert_eq!(c.hub.max_bytes_per_s.0, 16 << 20);
    assert_eq!(c.hub.max_subscriptions, 1_000);
    let c = HubConfig::from_toml(
        "[hub]\nmax_messages_per_s = 20\nmax_bytes_per_s = \"1MiB\"\n\
         throttle_grace = \"3s\"\nmax_subscriptions = 0\n",
    )
    .unwrap();
    let b = crate::server::broker_config(&c.hub).unwrap();
    assert_eq!(b.max_messages_per_s, 20);
    assert_eq!(b.max_bytes_per_s, 1 << 20);
    assert_eq!(b.throttle_grace, std::time::Duration::from_secs(3));
    assert_eq!(b.max_subscriptions, 0);
    assert!(b.tls.is_none() && b.tls_listen.is_empty());
    // No connection limit given: the open-file limit less a reserve.
    assert!(b.max_connections >= 64, "{}", b.max_connections);
    let c = HubConfig::from_toml("[hub]\nmax_connections = 5\n").unwrap();
    assert_eq!(
        crate::server::broker_config(&c.hub)
            .unwrap()
            .max_connections,
        5
    );
}

#[test]
fn the_dashboard_table_takes_a_geojson_file_and_a_tile_url_template() {
    let cfg = HubConfig::from_toml(&format!(
        "{GOOD}\n[dashboard]\ngeojson = \"map/district.geojson\"\ntile_url = \"https://tiles.example/{{z}}/{{x}}/{{y}}.png\"\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.dashboard.geojson.as_deref(),
        Some(Path::new("map/district.geojson"))
    );
    let mut resolved = cfg.clone();
    resolved.resolve_paths(Path::new("/etc/hub"));
    assert_eq!(
        resolved.dashboard.geojson.as_deref(),
        Some(Path::new("/etc/hub/map/district.geojson"))
    );

    let e = HubConfig::from_toml(&format!(
        "{GOOD}\n[dashboard]\ntile_url = \"tiles.example/z/x/y.png\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("dashboard.tile_url"), "{e}");
    let e = HubConfig::from_toml(&format!("{GOOD}\n[dashboard]\ngeojsn = \"x\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("geojsn"), "{e}");
}
