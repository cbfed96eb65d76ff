//! Tests of the configuration schema: defaults, parsing, every refusal and
//! the command-line overrides.

use super::*;
use proptest::prelude::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", &Overrides::default())
}

fn parse_with(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", overrides)
}

/// The error message of `text`, checked to be one line.
fn error(text: &str) -> String {
    error_with(text, &Overrides::default())
}

fn error_with(text: &str, overrides: &Overrides) -> String {
    match parse_with(text, overrides) {
        Ok(config) => panic!("accepted {text:?}: {config:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "not one line: {message:?}");
            assert!(message.starts_with("config error: "), "{message}");
            message
        }
    }
}

fn listen(addresses: &[&str]) -> Overrides {
    Overrides { listen: addresses.iter().map(|a| a.to_string()).collect(), ..Overrides::default() }
}

fn nz16(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).expect("test constant is non-zero")
}

fn nz32(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("test constant is non-zero")
}

// ---- defaults --------------------------------------------------------------

#[test]
fn empty_file_is_the_default_configuration() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(Config::from_overrides(&Overrides::default()).unwrap(), Config::default());
}

#[test]
fn defaults_are_those_of_the_design() {
    let config = Config::default();
    assert_eq!(config.shards(), ShardCount::Auto);
    assert_eq!(config.listeners().len(), 1);
    let listener = &config.listeners()[0];
    assert_eq!(listener.bind(), "127.0.0.1:1883".parse().unwrap());
    assert_eq!(listener.listen_backlog(), nz16(1024));
    assert!(config.allow_anonymous_on(listener));

    let limits = config.limits();
    assert_eq!(limits.max_connections(), nz32(1_000_000));
    assert_eq!(limits.max_packet_size(), nz32(1_048_576));
    assert_eq!(limits.connect_timeout(), Duration::from_millis(10_000));
    assert_eq!(limits.max_inflight(), nz16(32));
    assert_eq!(limits.max_queued_messages(), nz32(1000));
    assert_eq!(limits.max_queued_bytes(), 1_048_576);
    assert_eq!(limits.max_queued_retained(), nz32(1_000_000));
    assert_eq!(limits.max_connect_size(), nz32(65_536));
    assert_eq!(limits.max_pending_connect_bytes(), 16 * 1_048_576);
    assert_eq!(limits.max_keepalive(), nz16(240));
    assert_eq!(limits.receive_maximum(), nz16(32));
    assert_eq!(limits.topic_alias_maximum(), 16);
    assert_eq!(limits.max_session_expiry_s(), 604_800);
    assert_eq!(limits.max_subscriptions_per_client(), 0);
    assert_eq!(limits.max_topic_length(), 65_535);
    assert_eq!(limits.max_topic_levels(), 128);
    assert_eq!(limits.max_client_id_length(), 256);
    assert_eq!(limits.max_publish_rate(), 0);
    assert_eq!(limits.max_publish_bytes_rate(), 0);
    assert_eq!(limits.max_retained_messages(), 0);
    assert_eq!(limits.max_retained_bytes(), 0);
    assert!(config.retain_available());
    assert_eq!(config.response_information_prefix(), None);
    assert_eq!(config.redirect(), None);

    assert_eq!(config.log().level(), LogLevel::Info);
    assert_eq!(config.log().format(), LogFormat::Text);
}

#[test]
fn empty_tables_keep_the_defaults() {
    assert_eq!(parse("[limits]\n[log]\n").unwrap(), Config::default());
    let config = parse("[[listener]]\n").unwrap();
    assert_eq!(config, Config::default());
}

// ---- a full file -----------------------------------------------------------

#[test]
fn every_available_key_is_read() {
    let config = parse(
        r#"
        shards = 4
        allow_anonymous = true

        [[listener]]
        bind = "0.0.0.0:1883"
        protocol = "mqtt"
        proxy_protocol = false
        listen_backlog = 4096

        [[listener]]
        bind = "[::1]:1884"

        [limits]
        max_connections = 500
        max_packet_size = 65536
        connect_timeout_ms = 2500
        max_inflight = 10
        max_queued_messages = 20
        max_queued_bytes = 30000
        max_queued_retained = 40
        max_connect_size = 1000
        max_pending_connect_bytes = 50000
        max_keepalive = 60
        receive_maximum = 5
        topic_alias_maximum = 0
        max_session_expiry_s = 3600

        [log]
        level = "debug"
        format = "json"
        "#,
    )
    .unwrap();
    assert_eq!(config.shards(), ShardCount::Fixed(nz16(4)));
    assert_eq!(config.listeners().len(), 2);
    assert_eq!(config.listeners()[0].bind(), "0.0.0.0:1883".parse().unwrap());
    assert_eq!(config.listeners()[0].listen_backlog(), nz16(4096));
    assert_eq!(config.listeners()[1].bind(), "[::1]:1884".parse().unwrap());
    assert_eq!(config.listeners()[1].listen_backlog(), nz16(1024));
    assert!(config.listeners().iter().all(|l| config.allow_anonymous_on(l)));

    let limits = config.limits();
    assert_eq!(limits.max_connections(), nz32(500));
    assert_eq!(limits.max_packet_size(), nz32(65536));
    assert_eq!(limits.connect_timeout(), Duration::from_millis(2500));
    assert_eq!(limits.max_inflight(), nz16(10));
    assert_eq!(limits.max_queued_messages(), nz32(20));
    assert_eq!(limits.max_queued_bytes(), 30000);
    assert_eq!(limits.max_queued_retained(), nz32(40));
    assert_eq!(limits.max_connect_size(), nz32(1000));
    assert_eq!(limits.max_pending_connect_bytes(), 50000);
    assert_eq!(limits.max_keepalive(), nz16(60));
    assert_eq!(limits.receive_maximum(), nz16(5));
    assert_eq!(limits.topic_alias_maximum(), 0);
    assert_eq!(limits.max_session_expiry_s(), 3600);

    assert_eq!(config.log().level(), LogLevel::Debug);
    assert_eq!(config.log().format(), LogFormat::Json);
}

#[test]
fn example_file_at_the_repository_root_is_valid() {
    let text = include_str!("../../ringmq.toml");
    let config = Config::from_toml(text, "ringmq.toml", &Overrides::default()).unwrap();
    assert_eq!(config, Config::default(), "the example documents the defaults");
}

#[test]
fn example_file_documents_every_key_of_the_schema() {
    let text = include_str!("../../ringmq.toml");
    let keys = [
        "shards",
        "allow_anonymous",
        "password_file",
        "scram_file",
        "acl_file",
        "data_dir",
        "durability",
        "fsync_interval_ms",
        "sys_interval_s",
        "drain_timeout_s",
        "[[listener]]",
        "bind",
        "protocol",
        "path",
        "proxy_protocol",
        // Its cert, key and client_ca are documented on its own line.
        "tls",
        "use_identity_as_username",
        "listen_backlog",
        "max_connection_rate",
        "[limits]",
        "max_connections",
        "max_packet_size",
        "connect_timeout_ms",
        "max_inflight",
        "max_queued_messages",
        "max_queued_bytes",
        "max_queued_retained",
        "max_connect_size",
        "max_pending_connect_bytes",
        "max_keepalive",
        "receive_maximum",
        "topic_alias_maximum",
        "server_topic_alias_maximum",
        "max_session_expiry_s",
        "max_subscriptions_per_client",
        "max_topic_length",
        "max_topic_levels",
        "max_client_id_length",
        "max_publish_rate",
        "max_publish_bytes_rate",
        "max_retained_messages",
        "max_retained_bytes",
        "retain_available",
        "response_information_prefix",
        "[redirect]",
        "server_reference",
        "mode",
        "[admin]",
        "listen",
        "[log]",
        "level",
        "format",
    ];
    for key in keys {
        let documented = text.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} =")) || (key.starts_with('[') && line == key)
        });
        assert!(documented, "{key} is not in ringmq.toml");
    }
}

// ---- 5.0 features: retain, response information, redirect, quota -----------

#[test]
fn retain_response_information_redirect_and_the_subscription_quota_are_read() {
    let config = parse(
        r#"
        retain_available = false
        response_information_prefix = "reply/"

        [redirect]
        server_reference = "mqtt2.example.com:1883 [::1]:1883"
        mode = "moved"

        [limits]
        max_subscriptions_per_client = 100
        "#,
    )
    .unwrap();
    assert!(!config.retain_available());
    assert_eq!(config.response_information_prefix(), Some("reply/"));
    let redirect = config.redirect().unwrap();
    assert_eq!(redirect.server_reference, "mqtt2.example.com:1883 [::1]:1883");
    assert_eq!(redirect.mode, RedirectMode::Moved);
    assert_eq!(config.limits().max_subscriptions_per_client(), 100);
    let config = parse("[redirect]\nserver_reference = \"b:1883\"\n").unwrap();
    assert_eq!(config.redirect().unwrap().mode, RedirectMode::UseAnother);
}

#[test]
fn bad_redirect_and_response_information_prefix_are_refused_by_name() {
    assert!(error("[redirect]\nmode = \"moved\"\n").contains("redirect.server_reference"));
    assert!(error("[redirect]\nserver_reference = \" \"\n").contains("redirect.server_reference"));
    let message = error("[redirect]\nserver_reference = \"b\"\nmode = \"gone\"\n");
    assert!(message.contains("redirect.mode = \"gone\""), "{message}");
    for bad in ["", "a/+/", "#"] {
        let message = error(&format!("response_information_prefix = {bad:?}\n"));
        assert!(message.contains("response_information_prefix"), "{message}");
    }
    let message = error("[limits]\nmax_subscriptions_per_client = -1\n");
    assert!(message.contains("limits.max_subscriptions_per_client = -1"), "{message}");
}

#[test]
fn retain_response_information_and_redirect_need_a_restart_the_quota_does_not() {
    let running = Config::default();
    let new = parse(
        "retain_available = false\nresponse_information_prefix = \"r/\"\n\
         [redirect]\nserver_reference = \"b\"\n[limits]\nmax_subscriptions_per_client = 5\n",
    )
    .unwrap();
    let changes = running.changes(&new);
    assert_eq!(
        changes.needs_restart,
        ["retain_available", "response_information_prefix", "redirect"]
    );
    assert_eq!(changes.limits.len(), 1);
    assert_eq!(changes.limits[0].key, "limits.max_subscriptions_per_client");
    let reloaded = running.reloaded(&new);
    assert!(reloaded.retain_available());
    assert_eq!(reloaded.limits().max_subscriptions_per_client(), 5);
}

// ---- abuse limits ----------------------------------------------------------

#[test]
fn abuse_limits_are_read_refused_out_of_range_and_reloadable() {
    let text = "[limits]\nmax_topic_length = 256\nmax_topic_levels = 8\n\
                max_client_id_length = 64\nmax_publish_rate = 100\n\
                max_publish_bytes_rate = 65536\nmax_retained_messages = 1000\n\
                max_retained_bytes = 1048576\n";
    let config = parse(text).unwrap();
    let limits = config.limits();
    assert_eq!(limits.max_topic_length(), 256);
    assert_eq!(limits.max_topic_levels(), 8);
    assert_eq!(limits.max_client_id_length(), 64);
    assert_eq!(limits.max_publish_rate(), 100);
    assert_eq!(limits.max_publish_bytes_rate(), 65_536);
    assert_eq!(limits.max_retained_messages(), 1000);
    assert_eq!(limits.max_retained_bytes(), 1_048_576);
    for (key, bad) in [
        ("max_topic_length", "0"),
        ("max_topic_length", "65536"),
        ("max_topic_levels", "0"),
        ("max_topic_levels", "32769"),
        // [MQTT-3.1.3-5] ids of 1 to 23 bytes must be accepted.
        ("max_client_id_length", "22"),
        ("max_publish_rate", "-1"),
        ("max_publish_bytes_rate", "-1"),
        ("max_retained_messages", "-1"),
        ("max_retained_bytes", "-1"),
    ] {
        let message = error(&format!("[limits]\n{key} = {bad}\n"));
        assert!(message.contains(&format!("limits.{key} = {bad}")), "{message}");
    }
    let changes = Config::default().changes(&config);
    assert!(changes.needs_restart.is_empty());
    assert_eq!(changes.limits.len(), 7);
}

// ---- sys_interval_s --------------------------------------------------------

#[test]
fn sys_interval_defaults_to_ten_seconds_and_zero_disables_it() {
    assert_eq!(Config::default().sys_interval(), Some(Duration::from_secs(10)));
    assert_eq!(parse("sys_interval_s = 0").unwrap().sys_interval(), None);
    assert_eq!(
        parse("sys_interval_s = 86400").unwrap().sys_interval(),
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(
        error("sys_interval_s = -1"),
        "config error: sys_interval_s = -1: must be between 0 and 86400"
    );
    assert!(error("sys_interval_s = 86401").contains("sys_interval_s = 86401: must be between"));
}

// ---- drain_timeout_s -------------------------------------------------------

#[test]
fn drain_timeout_defaults_to_zero_and_is_at_most_an_hour() {
    assert_eq!(Config::default().drain_timeout(), Duration::ZERO);
    assert_eq!(parse("drain_timeout_s = 30").unwrap().drain_timeout(), Duration::from_secs(30));
    assert_eq!(parse("drain_timeout_s = 3600").unwrap().drain_timeout(), Duration::from_secs(3600));
    assert_eq!(
        error("drain_timeout_s = 3601"),
        "config error: drain_timeout_s = 3601: must be between 0 and 3600"
    );
    assert!(error("drain_timeout_s = -1").contains("drain_timeout_s = -1: must be between"));
}

// ---- shards ----------------------------------------------------------------

#[test]
fn shards_zero_is_auto_and_the_maximum_is_accepted() {
    assert_eq!(parse("shards = 0").unwrap().shards(), ShardCount::Auto);
    assert_eq!(parse("shards = 1").unwrap().shards(), ShardCount::Fixed(nz16(1)));
    assert_eq!(parse("shards = 256").unwrap().shards(), ShardCount::Fixed(nz16(MAX_SHARDS)));
}

#[test]
fn shards_out_of_range_is_refused_by_name() {
    assert_eq!(
        error("shards = 257"),
        "config error: shards = 257: must be between 0 and 256 (0 = one shard per core)"
    );
    assert!(error("shards = -1").contains("shards = -1: must be between 0 and 256"));
}

#[test]
fn shard_count_displays_as_check_config_prints_it() {
    assert_eq!(ShardCount::Auto.to_string(), "auto");
    assert_eq!(ShardCount::Fixed(nz16(8)).to_string(), "8");
}

// ---- limits ----------------------------------------------------------------

/// Each limit with its smallest and largest valid values.
const LIMIT_RANGES: [(&str, i64, i64); 14] = [
    ("max_connections", 1, 4_294_967_295),
    ("max_packet_size", 64, 268_435_460),
    ("connect_timeout_ms", 1, 3_600_000),
    ("max_inflight", 1, 65_535),
    ("max_queued_messages", 1, 4_294_967_295),
    ("max_queued_bytes", 1, i64::MAX),
    ("max_queued_retained", 1, 4_294_967_295),
    ("max_connect_size", 64, 268_435_460),
    ("max_pending_connect_bytes", 1, i64::MAX),
    ("max_keepalive", 1, 65_535),
    ("receive_maximum", 1, 65_535),
    ("topic_alias_maximum", 0, 65_535),
    ("server_topic_alias_maximum", 0, 255),
    ("max_session_expiry_s", 0, 4_294_967_295),
];

#[test]
fn limits_accept_both_ends_of_their_range() {
    for (key, min, max) in LIMIT_RANGES {
        for n in [min, max] {
            let text = format!("[limits]\n{key} = {n}");
            assert!(parse(&text).is_ok(), "{text}: {:?}", parse(&text));
        }
    }
    let limits = *parse("[limits]\nmax_session_expiry_s = 4294967295").unwrap().limits();
    assert_eq!(limits.max_session_expiry_s(), u32::MAX);
    let limits = *parse("[limits]\nmax_packet_size = 268435460").unwrap().limits();
    assert_eq!(limits.max_packet_size().get(), 268_435_460);
}

#[test]
fn limits_out_of_range_are_refused_by_key_with_the_range() {
    for (key, min, max) in LIMIT_RANGES {
        let mut outside = vec![min - 1];
        if max < i64::MAX {
            outside.push(max + 1);
        }
        for n in outside {
            let message = error(&format!("[limits]\n{key} = {n}"));
            assert_eq!(
                message,
                format!("config error: limits.{key} = {n}: must be between {min} and {max}")
            );
        }
    }
}

#[test]
fn max_inflight_zero_gives_the_documented_message() {
    assert_eq!(
        error("[limits]\nmax_inflight = 0"),
        "config error: limits.max_inflight = 0: must be between 1 and 65535"
    );
}

#[test]
fn receive_maximum_zero_is_refused() {
    // A Receive Maximum of 0 is a Protocol Error (MQTT 5.0 §3.2.2.3.3): the
    // broker must never advertise it.
    assert!(error("[limits]\nreceive_maximum = 0").contains("limits.receive_maximum = 0"));
}

#[test]
fn topic_alias_maximum_zero_is_accepted() {
    // 0: the client may send no Topic Alias [MQTT-3.2.2-18].
    let config = parse("[limits]\ntopic_alias_maximum = 0").unwrap();
    assert_eq!(config.limits().topic_alias_maximum(), 0);
}

// ---- listeners -------------------------------------------------------------

#[test]
fn bad_bind_address_names_the_listener_and_gives_an_example() {
    assert_eq!(
        error("[[listener]]\nbind = \"127.0.0.1:1883\"\n[[listener]]\nbind = \"0.0.0.0:x\""),
        "config error: listener[1].bind = \"0.0.0.0:x\": not a socket address (e.g. \
         \"0.0.0.0:1883\")"
    );
    // Host names are not resolved: the address must be literal.
    assert!(error("[[listener]]\nbind = \"localhost:1883\"").contains("listener[0].bind"));
    assert!(error("[[listener]]\nbind = \"127.0.0.1\"").contains("not a socket address"));
}

#[test]
fn listener_without_bind_uses_the_default_address() {
    let config = parse("[[listener]]\nlisten_backlog = 10").unwrap();
    assert_eq!(config.listeners()[0].bind(), DEFAULT_BIND);
    assert_eq!(config.listeners()[0].listen_backlog(), nz16(10));
}

#[test]
fn listen_backlog_out_of_range_is_refused_by_name() {
    assert_eq!(
        error("[[listener]]\nlisten_backlog = 0"),
        "config error: listener[0].listen_backlog = 0: must be between 1 and 65535"
    );
    assert!(error("[[listener]]\nlisten_backlog = 65536")
        .contains("listener[0].listen_backlog = 65536"));
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    assert_eq!(
        error("[[listener]]\nbind = \"127.0.0.1:1883\"\n[[listener]]\nbind = \"127.0.0.1:1883\""),
        "config error: listener[1].bind = \"127.0.0.1:1883\": listener[0] already binds this \
         address; give each listener its own"
    );
    // A listener without bind is on the default address too.
    assert!(error("[[listener]]\n[[listener]]\n").contains("listener[1].bind"));
}

#[test]
fn port_zero_listeners_do_not_clash() {
    let config =
        parse("[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"")
            .unwrap();
    assert_eq!(config.listeners().len(), 2);
}

#[test]
fn an_empty_listener_array_is_refused() {
    assert!(error("listener = []").contains("listener = []: at least one listener is required"));
}

#[test]
fn unknown_protocol_is_refused_by_name() {
    assert_eq!(
        error("[[listener]]\nprotocol = \"mqtts\""),
        "config error: listener[0].protocol = \"mqtts\": must be \"mqtt\" or \"ws\""
    );
}

// ---- persistence -------------------------------------------------------------

#[test]
fn without_data_dir_everything_is_in_memory() {
    let config = parse("").unwrap();
    assert_eq!((config.data_dir(), config.durability()), (None, Durability::None));
    let config = parse("durability = \"none\"\nfsync_interval_ms = 5").unwrap();
    assert_eq!((config.data_dir(), config.durability()), (None, Durability::None));
}

#[test]
fn data_dir_defaults_to_always_and_takes_every_mode() {
    let config = parse("data_dir = \"/var/lib/ringmq\"").unwrap();
    assert_eq!(config.data_dir(), Some(Path::new("/var/lib/ringmq")));
    assert_eq!(config.durability(), Durability::Always);
    let config = parse("data_dir = \"/d\"\ndurability = \"interval\"").unwrap();
    assert_eq!(config.durability(), Durability::Interval(Duration::from_millis(10)));
    let config =
        parse("data_dir = \"/d\"\ndurability = \"interval\"\nfsync_interval_ms = 250").unwrap();
    assert_eq!(config.durability(), Durability::Interval(Duration::from_millis(250)));
    // `none` keeps the key but writes and reads nothing.
    let config = parse("data_dir = \"/d\"\ndurability = \"none\"").unwrap();
    assert_eq!((config.data_dir(), config.durability()), (None, Durability::None));
}

#[test]
fn a_relative_data_dir_is_taken_from_the_working_directory() {
    let config = parse("data_dir = \"var/ringmq\"").unwrap();
    let expected = std::env::current_dir().unwrap().join("var/ringmq");
    assert_eq!(config.data_dir(), Some(expected.as_path()));
}

#[test]
fn bad_persistence_settings_are_one_line_naming_the_key() {
    assert_eq!(
        error("durability = \"always\""),
        "config error: durability = \"always\": needs data_dir (the directory of the durable \
         log); set data_dir or remove the key"
    );
    assert_eq!(
        error("data_dir = \"/d\"\ndurability = \"sometimes\""),
        "config error: durability = \"sometimes\": must be \"always\", \"interval\" or \"none\""
    );
    assert!(
        error("data_dir = \"\"").starts_with("config error: data_dir = \"\": must be a directory")
    );
    assert_eq!(
        error("data_dir = \"/d\"\nfsync_interval_ms = 0"),
        "config error: fsync_interval_ms = 0: must be between 1 and 60000"
    );
    assert!(error("data_dir = 5").contains("data_dir"));
}

#[test]
fn persistence_changes_need_a_restart() {
    let old = parse("").unwrap();
    let new = parse("data_dir = \"/d\"").unwrap();
    assert_eq!(old.changes(&new).needs_restart, vec!["data_dir", "durability"]);
}

#[test]
fn admin_listen_is_absent_default_empty_or_an_address() {
    assert_eq!(parse("").unwrap().admin(), None, "no [admin]: no admin listener");
    assert_eq!(parse("[admin]").unwrap().admin(), Some(DEFAULT_ADMIN_LISTEN));
    assert_eq!(parse("[admin]\nlisten = \"\"").unwrap().admin(), None);
    assert_eq!(
        parse("[admin]\nlisten = \"127.0.0.1:9100\"").unwrap().admin(),
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(
        error("[admin]\nlisten = \"x\""),
        "config error: admin.listen = \"x\": not a socket address (e.g. \"0.0.0.0:1883\")"
    );
}

#[test]
fn websocket_listeners_take_a_path_defaulting_to_mqtt() {
    let config = parse(
        "[[listener]]\n[[listener]]\nbind = \"127.0.0.1:8080\"\nprotocol = \"ws\"\n\
         [[listener]]\nbind = \"127.0.0.1:8081\"\nprotocol = \"ws\"\npath = \"/a/b\"",
    )
    .unwrap();
    let paths: Vec<_> = config.listeners().iter().map(|l| l.websocket_path()).collect();
    assert_eq!(paths, [None, Some("/mqtt"), Some("/a/b")]);
    assert_eq!(
        error("[[listener]]\npath = \"/mqtt\""),
        "config error: listener[0].path: only a WebSocket listener has a path; set \
         listener[0].protocol = \"ws\" or remove the key"
    );
    for bad in ["mqtt", "/a b", "/a?x", ""] {
        assert_eq!(
            error(&format!("[[listener]]\nprotocol = \"ws\"\npath = {bad:?}")),
            format!(
                "config error: listener[0].path = {bad:?}: must be an absolute path such as \
                 \"/mqtt\" (printable ASCII, no spaces, '?' or '#', at most 1024 bytes)"
            )
        );
    }
    assert_eq!(
        error("[[listener]]\nprotocol = \"http\""),
        "config error: listener[0].protocol = \"http\": must be \"mqtt\" or \"ws\""
    );
}

#[test]
fn tls_takes_a_cert_a_key_and_an_optional_client_ca() {
    let config = parse(
        "[[listener]]\n[[listener]]\nbind = \"127.0.0.1:8883\"\n\
         tls = { cert = \"c.pem\", key = \"k.pem\" }",
    )
    .unwrap();
    assert_eq!(config.listeners()[0].tls(), None);
    let tls = config.listeners()[1].tls().unwrap();
    assert_eq!((tls.cert.to_str(), tls.key.to_str()), (Some("c.pem"), Some("k.pem")));
    assert_eq!(tls.client_ca, None);
    let config = parse(
        "[[listener]]\ntls = { cert = \"c.pem\", key = \"k.pem\", client_ca = \"ca.pem\" }\n\
         use_identity_as_username = true",
    )
    .unwrap();
    assert_eq!(config.listeners()[0].tls().unwrap().client_ca, Some("ca.pem".into()));
    assert!(config.listeners()[0].use_identity_as_username());
}

#[test]
fn tls_without_its_files_is_refused_by_key() {
    assert_eq!(
        error("[[listener]]\ntls = { cert = \"c.pem\" }"),
        "config error: listener[0].tls.key: missing; a TLS listener needs both cert and key \
         (PEM files)"
    );
    assert_eq!(
        error("[[listener]]\ntls = { cert = \"\", key = \"k.pem\" }"),
        "config error: listener[0].tls.cert = \"\": must be the path of a PEM file"
    );
    assert!(error("[[listener]]\ntls = { cert = \"c\", key = \"k\", ca = \"x\" }")
        .contains("unknown key `listener[0].tls.ca`"));
    assert_eq!(
        error("[[listener]]\ntls = { cert = \"c\", key = \"k\" }\nuse_identity_as_username = true"),
        "config error: listener[0].use_identity_as_username = true: needs client certificates; \
         set listener[0].tls.client_ca (and listener[0].tls.cert/key) or remove the key"
    );
}

#[test]
fn a_listener_naming_clients_by_certificate_needs_no_allow_anonymous() {
    let mtls = "[[listener]]\nbind = \"0.0.0.0:8883\"\n\
                tls = { cert = \"c\", key = \"k\", client_ca = \"ca\" }\n";
    assert!(error(mtls).contains("is not loopback and no authentication is configured"));
    let config = parse(&format!("{mtls}use_identity_as_username = true")).unwrap();
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    // Clients named by their certificates can connect: not refused as a
    // configuration nobody could pass.
    assert!(
        parse(&format!("allow_anonymous = false\n{mtls}use_identity_as_username = true")).is_ok()
    );
}

#[test]
fn proxy_protocol_is_per_listener_and_off_by_default() {
    assert_eq!(parse("[[listener]]\nproxy_protocol = false").unwrap(), Config::default());
    assert!(!Config::default().listeners()[0].proxy_protocol());
    let config = parse(
        "[[listener]]\nproxy_protocol = true\n[[listener]]\nbind = \"127.0.0.1:8883\"\n\
         proxy_protocol = true\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n\
         [[listener]]\nbind = \"127.0.0.1:1884\"",
    )
    .unwrap();
    let proxied: Vec<bool> = config.listeners().iter().map(|l| l.proxy_protocol()).collect();
    assert_eq!(proxied, [true, true, false]);
}

// ---- anonymous access ------------------------------------------------------

#[test]
fn non_loopback_listener_without_authentication_needs_allow_anonymous() {
    assert_eq!(
        error("[[listener]]\nbind = \"0.0.0.0:1883\""),
        "config error: listener[0].bind = \"0.0.0.0:1883\" is not loopback and no \
         authentication is configured; set allow_anonymous = true (globally, or \
         listener[0].allow_anonymous) to accept anonymous clients on it"
    );
    assert!(error("[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"[::]:1883\"")
        .contains("listener[1].bind = \"[::]:1883\" is not loopback"));
    assert!(error("[[listener]]\nbind = \"10.1.2.3:1883\"").contains("is not loopback"));
}

#[test]
fn allow_anonymous_true_opens_every_listener() {
    let config = parse("allow_anonymous = true\n[[listener]]\nbind = \"0.0.0.0:1883\"").unwrap();
    assert!(config.allow_anonymous_on(&config.listeners()[0]));
}

#[test]
fn loopback_listeners_allow_anonymous_by_default() {
    for bind in ["127.0.0.1:1883", "127.9.9.9:1883", "[::1]:1883", "[::ffff:127.0.0.1]:1883"] {
        let config = parse(&format!("[[listener]]\nbind = \"{bind}\"")).unwrap();
        let listener = &config.listeners()[0];
        assert!(listener.is_loopback(), "{bind}");
        assert!(config.allow_anonymous_on(listener), "{bind}");
    }
}

#[test]
fn a_password_file_opens_non_loopback_listeners_to_authenticated_clients() {
    let config =
        parse("password_file = \"/etc/ringmq/passwd\"\n[[listener]]\nbind = \"0.0.0.0:1883\"")
            .unwrap();
    assert_eq!(config.password_file(), Some(Path::new("/etc/ringmq/passwd")));
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    let with_flag = parse_with("password_file = \"p\"", &listen(&["0.0.0.0:1883"])).unwrap();
    assert!(!with_flag.allow_anonymous_on(&with_flag.listeners()[0]));
}

#[test]
fn a_password_file_refuses_anonymous_clients_unless_allowed() {
    // Even on loopback: configuring authentication means using it.
    let config = parse("password_file = \"p\"").unwrap();
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    let config = parse("password_file = \"p\"\nallow_anonymous = false").unwrap();
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    let text = "password_file = \"p\"\nallow_anonymous = true\n[[listener]]\nbind = \"[::]:1\"";
    let config = parse(text).unwrap();
    assert!(config.allow_anonymous_on(&config.listeners()[0]));
}

#[test]
fn password_file_must_be_a_non_empty_path() {
    assert!(error("password_file = \"\"")
        .starts_with("config error: password_file = \"\": must be a path"));
    assert!(error("password_file = 1").contains("password_file: invalid type"));
    assert_eq!(parse("").unwrap().password_file(), None);
}

#[test]
fn a_scram_file_is_authentication_too() {
    // Like a password file: non-loopback listeners are allowed, anonymous
    // clients refused unless allowed, and an empty path refused.
    let config =
        parse("scram_file = \"/etc/ringmq/scram\"\n[[listener]]\nbind = \"0.0.0.0:1\"").unwrap();
    assert_eq!(config.scram_file(), Some(Path::new("/etc/ringmq/scram")));
    assert_eq!(config.password_file(), None);
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    let config = parse("scram_file = \"s\"\nallow_anonymous = false").unwrap();
    assert!(!config.allow_anonymous_on(&config.listeners()[0]));
    let config = parse("scram_file = \"s\"\nallow_anonymous = true").unwrap();
    assert!(config.allow_anonymous_on(&config.listeners()[0]));
    assert!(
        error("scram_file = \"\"").starts_with("config error: scram_file = \"\": must be a path")
    );
    assert_eq!(parse("").unwrap().scram_file(), None);
}

#[test]
fn allow_anonymous_per_listener_overrides_the_global_key() {
    // Open to anonymous clients on one public listener only.
    let text = "password_file = \"p\"\n[[listener]]\nbind = \"0.0.0.0:1883\"\n\
                [[listener]]\nbind = \"0.0.0.0:1884\"\nallow_anonymous = true";
    let config = parse(text).unwrap();
    let [first, second] = config.listeners() else { panic!("two listeners") };
    assert!(!config.allow_anonymous_on(first) && config.allow_anonymous_on(second));
    // Closed on one listener although open globally.
    let text = "password_file = \"p\"\nallow_anonymous = true\n[[listener]]\n\
                bind = \"127.0.0.1:1\"\nallow_anonymous = false\n[[listener]]\nbind = \"[::]:2\"";
    let config = parse(text).unwrap();
    let [first, second] = config.listeners() else { panic!("two listeners") };
    assert!(!config.allow_anonymous_on(first) && config.allow_anonymous_on(second));
    // Without authentication: a public listener may be opened by its own key...
    let text = "[[listener]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true";
    assert!(parse(text).is_ok());
    // ... and the refusal names the listener that is neither.
    let text = "[[listener]]\nbind = \"0.0.0.0:1883\"\nallow_anonymous = true\n\
                [[listener]]\nbind = \"0.0.0.0:1884\"";
    assert!(error(text).starts_with(
        "config error: listener[1].bind = \"0.0.0.0:1884\" is not loopback and no \
         authentication is configured; set allow_anonymous = true (globally, or \
         listener[1].allow_anonymous)"
    ));
    // A listener closed to everyone is refused.
    let text = "[[listener]]\nbind = \"127.0.0.1:1883\"\nallow_anonymous = false";
    assert!(error(text).starts_with(
        "config error: listener[0].allow_anonymous = false: no authentication is configured"
    ));
    assert!(error("[[listener]]\nallow_anonymous = 1")
        .contains("listener[0].allow_anonymous: invalid type"));
}

#[test]
fn acl_file_is_a_non_empty_path() {
    let config = parse("acl_file = \"/etc/ringmq/acl\"").unwrap();
    assert_eq!(config.acl_file(), Some(Path::new("/etc/ringmq/acl")));
    assert_eq!(parse("").unwrap().acl_file(), None);
    assert!(error("acl_file = \"\"").starts_with("config error: acl_file = \"\": must be a path"));
    assert!(error("acl_file = 1").contains("acl_file: invalid type"));
}

#[test]
fn allow_anonymous_false_without_authentication_is_refused() {
    assert!(error("allow_anonymous = false")
        .starts_with("config error: allow_anonymous = false: no authentication is configured"));
}

// ---- log -------------------------------------------------------------------

#[test]
fn log_levels_are_read_case_insensitively() {
    for (name, level) in [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("INFO", LogLevel::Info),
        ("Debug", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ] {
        let config = parse(&format!("[log]\nlevel = \"{name}\"")).unwrap();
        assert_eq!(config.log().level(), level);
    }
    assert_eq!(LogLevel::Warn.to_string(), "warn");
}

#[test]
fn bad_log_settings_are_refused_by_name() {
    assert_eq!(
        error("[log]\nlevel = \"verbose\""),
        "config error: log.level = \"verbose\": must be one of error, warn, info, debug, trace"
    );
    assert_eq!(
        error("[log]\nformat = \"xml\""),
        "config error: log.format = \"xml\": must be \"text\" or \"json\""
    );
}

// ---- parse errors ----------------------------------------------------------

#[test]
fn unknown_top_level_key_names_key_file_and_line() {
    let message = error("shards = 2\nshard = 2");
    assert!(message.starts_with("config error: test.toml:2:1: unknown key `shard`"), "{message}");
    assert!(message.contains("`shards`"), "lists the known keys: {message}");
}

#[test]
fn unknown_nested_keys_are_named_by_their_full_path() {
    let message = error("[limits]\nmax_inflite = 3");
    assert!(message.starts_with("config error: test.toml:2:1: unknown key `limits.max_inflite`"));
    assert!(message.contains("`max_inflight`"), "{message}");

    let message = error("[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbnd = \"x\"");
    assert!(message.starts_with("config error: test.toml:4:1: unknown key `listener[1].bnd`"));

    assert!(
        error("[admin]\nlisten = \"x\"\n[log]\nlevle = \"x\"").contains("unknown key `log.levle`")
    );
    assert!(error("[limits2]\n").contains("unknown key `limits2`"));
}

#[test]
fn wrong_types_name_the_key_in_toml_terms() {
    assert_eq!(
        error("shards = \"four\""),
        "config error: test.toml:1:10: shards: invalid type: string \"four\", expected an integer"
    );
    assert_eq!(
        error("[limits]\nmax_inflight = 1.5"),
        "config error: test.toml:2:16: limits.max_inflight: invalid type: floating point `1.5`, \
         expected an integer"
    );
    assert!(error("limits = 3").contains("limits: invalid type: integer `3`, expected a table"));
    assert!(error("allow_anonymous = \"yes\"").contains("allow_anonymous: invalid type"));
    assert!(error("listener = 1").contains("listener: invalid type"));
    assert!(error("[[listener]]\nbind = 1883").contains("listener[0].bind: invalid type"));
}

#[test]
fn syntax_errors_are_one_line_with_a_position() {
    assert!(error("[limits\nmax_inflight = 1").starts_with("config error: test.toml:1:8: "));
    assert!(error("shards = 1\nshards = 2").starts_with("config error: test.toml:2:"));
    assert!(error("a = = 3").starts_with("config error: test.toml:1:"));
}

#[test]
fn positions_count_characters_not_bytes() {
    assert_eq!(locate::line_column("é = 1\nxé", 9), (2, 3));
    assert_eq!(locate::line_column("", 0), (1, 1));
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let path = Path::new("/nonexistent/ringmq-test.toml");
    let message = Config::from_file(path, &Overrides::default()).unwrap_err().to_string();
    assert!(message.starts_with("config error: cannot read /nonexistent/ringmq-test.toml: "));
    assert!(!message.contains('\n'));
}

// ---- overrides -------------------------------------------------------------

#[test]
fn listen_flags_replace_the_configured_listeners() {
    let text = "[[listener]]\nbind = \"127.0.0.1:1\"\nlisten_backlog = 5";
    let config = parse_with(text, &listen(&["127.0.0.1:2", "[::1]:3"])).unwrap();
    let binds: Vec<SocketAddr> = config.listeners().iter().map(ListenerConfig::bind).collect();
    assert_eq!(binds, ["127.0.0.1:2".parse().unwrap(), "[::1]:3".parse().unwrap()]);
    assert!(config.listeners().iter().all(|l| l.listen_backlog() == nz16(1024)));
}

#[test]
fn validation_runs_after_the_overrides() {
    // The configured listener would be refused (not loopback); it is replaced.
    let text = "[[listener]]\nbind = \"0.0.0.0:1883\"";
    assert!(parse_with(text, &listen(&["127.0.0.1:1883"])).is_ok());
    // And the replacement is checked instead.
    assert_eq!(
        error_with("", &listen(&["0.0.0.0:1883"])),
        "config error: --listen \"0.0.0.0:1883\" is not loopback and no authentication is \
         configured; set allow_anonymous = true to accept anonymous clients on it"
    );
    assert!(parse_with("allow_anonymous = true", &listen(&["0.0.0.0:1883"])).is_ok());
    let overrides = Overrides { shards: Some(2), ..Overrides::default() };
    assert_eq!(
        parse_with("shards = 5000", &overrides).unwrap().shards(),
        ShardCount::Fixed(nz16(2))
    );
}

#[test]
fn bad_listen_flags_are_refused_by_flag() {
    assert_eq!(
        error_with("", &listen(&["0.0.0.0:x"])),
        "config error: --listen \"0.0.0.0:x\": not a socket address (e.g. \"0.0.0.0:1883\")"
    );
    assert_eq!(
        error_with("", &listen(&["127.0.0.1:1883", "127.0.0.1:1883"])),
        "config error: --listen \"127.0.0.1:1883\": given twice"
    );
}

#[test]
fn shards_and_log_flags_override_the_file() {
    let overrides =
        Overrides { shards: Some(0), log: Some("trace".to_owned()), ..Overrides::default() };
    let config = parse_with("shards = 3\n[log]\nlevel = \"warn\"", &overrides).unwrap();
    assert_eq!(config.shards(), ShardCount::Auto);
    assert_eq!(config.log().level(), LogLevel::Trace);
}

#[test]
fn bad_shards_and_log_flags_are_refused_by_flag() {
    let overrides = Overrides { shards: Some(2000), ..Overrides::default() };
    assert_eq!(
        error_with("", &overrides),
        "config error: --shards 2000: must be between 0 and 256 (0 = one shard per core)"
    );
    let overrides = Overrides { log: Some("loud".to_owned()), ..Overrides::default() };
    assert_eq!(
        error_with("[log]\nlevel = \"debug\"", &overrides),
        "config error: --log \"loud\": must be one of error, warn, info, debug, trace"
    );
    // A bad level in the file does not matter when the flag replaces it.
    let overrides = Overrides { log: Some("info".to_owned()), ..Overrides::default() };
    assert!(parse_with("[log]\nlevel = \"loud\"", &overrides).is_ok());
}

#[test]
fn file_checks_that_do_not_depend_on_overrides_still_apply() {
    // Unknown keys and values that contradict each other are refused even
    // when flags replace the listeners.
    let overrides = listen(&["127.0.0.1:1883"]);
    assert!(error_with("bogus = 1", &overrides).contains("unknown key `bogus`"));
    assert!(error_with("durability = \"always\"", &overrides).contains("needs data_dir"));
}

// ---- robustness ------------------------------------------------------------

proptest! {
    /// Whatever the input, parsing never panics and a refusal is one line.
    #[test]
    fn any_text_gives_a_config_or_a_one_line_error(text in "\\PC{0,200}") {
        if let Err(error) = parse(&text) {
            let message = error.to_string();
            prop_assert!(!message.contains('\n'), "{:?}", message);
        }
    }

    /// Same for text shaped like the schema, which reaches validation.
    #[test]
    fn schema_shaped_text_gives_a_config_or_a_one_line_error(
        key in prop::sample::select(vec![
            "shards", "allow_anonymous", "limits.max_inflight", "limits.max_packet_size",
            "log.level", "listener", "data_dir",
        ]),
        value in prop::sample::select(vec![
            "0", "-1", "1", "70000", "9223372036854775807", "true", "\"x\"", "[]", "{}", "1.5",
            "\"0.0.0.0:1883\"", "[{ bind = \"0.0.0.0:1\" }]", "[{ bind = \"\\n\" }]",
        ]),
    ) {
        if let Err(error) = parse(&format!("{key} = {value}")) {
            let message = error.to_string();
            prop_assert!(!message.contains('\n'), "{:?}", message);
        }
    }
}

// ---- Reload: what a re-read file changes ------------------------------------

#[test]
fn an_unchanged_file_changes_nothing() {
    let text = "[limits]\nmax_inflight = 8\n[log]\nlevel = \"warn\"\n";
    let config = parse(text).unwrap();
    assert!(config.changes(&parse(text).unwrap()).is_empty());
}

#[test]
fn changed_limits_are_listed_as_key_old_new() {
    let old = parse("[limits]\nmax_inflight = 32\nconnect_timeout_ms = 5000\n").unwrap();
    let new = parse("[limits]\nmax_inflight = 64\nconnect_timeout_ms = 7000\n").unwrap();
    let changes = old.changes(&new);
    let lines: Vec<String> = changes.limits.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["limits.connect_timeout_ms: 5000 -> 7000", "limits.max_inflight: 32 -> 64"]);
    assert!(changes.needs_restart.is_empty());
    assert_eq!(changes.log_level, None);
    let running = old.reloaded(&new);
    assert_eq!(running.limits(), new.limits());
}

#[test]
fn the_log_level_is_a_change_the_format_needs_a_restart() {
    let old = parse("[log]\nlevel = \"warn\"\n").unwrap();
    let new = parse("[log]\nlevel = \"debug\"\nformat = \"json\"\n").unwrap();
    let changes = old.changes(&new);
    assert_eq!(changes.log_level.unwrap().to_string(), "log.level: warn -> debug");
    assert_eq!(changes.needs_restart, ["log.format"]);
    let running = old.reloaded(&new);
    assert_eq!(running.log().level(), LogLevel::Debug);
    assert_eq!(running.log().format(), LogFormat::Text);
}

#[test]
fn listeners_shards_and_admin_need_a_restart_and_are_not_applied() {
    let old = parse("shards = 2\n[[listener]]\nbind = \"127.0.0.1:1883\"\n").unwrap();
    let new = parse(
        "shards = 4\n[[listener]]\nbind = \"127.0.0.1:1884\"\n[admin]\nlisten = \"127.0.0.1:9\"\n\
         [limits]\nmax_queued_messages = 5\n",
    )
    .unwrap();
    let changes = old.changes(&new);
    assert_eq!(changes.needs_restart, ["shards", "listener", "admin.listen"]);
    assert_eq!(changes.limits.len(), 1);
    let running = old.reloaded(&new);
    assert_eq!(running.shards(), old.shards());
    assert_eq!(running.listeners(), old.listeners());
    assert_eq!(running.admin(), old.admin());
    assert_eq!(running.limits().max_queued_messages().get(), 5);
    // What was not applied is reported again at the next reload.
    assert_eq!(running.changes(&new).needs_restart, ["shards", "listener", "admin.listen"]);
}

#[test]
fn auth_file_paths_reload_but_adding_or_removing_them_needs_a_restart() {
    let old = parse("password_file = \"a\"\nacl_file = \"x\"\n").unwrap();
    let new = parse("password_file = \"b\"\nacl_file = \"y\"\n").unwrap();
    let changes = old.changes(&new);
    assert!(changes.needs_restart.is_empty());
    let files: Vec<_> = changes.files.iter().map(ToString::to_string).collect();
    assert_eq!(files, ["password_file: \"a\" -> \"b\"", "acl_file: \"x\" -> \"y\""]);
    let running = old.reloaded(&new);
    assert_eq!(
        (running.password_file(), running.acl_file()),
        (new.password_file(), new.acl_file())
    );
    let without = parse("allow_anonymous = true\n").unwrap();
    let changes = old.changes(&without);
    assert_eq!(changes.needs_restart, ["allow_anonymous", "password_file", "acl_file"]);
    let running = old.reloaded(&without);
    assert_eq!(
        (running.password_file(), running.acl_file()),
        (old.password_file(), old.acl_file())
    );
}

#[test]
fn the_sys_interval_and_the_drain_timeout_are_applied_by_a_reload() {
    let old = parse("sys_interval_s = 10\n").unwrap();
    let new = parse("sys_interval_s = 0\ndrain_timeout_s = 30\n").unwrap();
    let changes = old.changes(&new);
    let lines: Vec<String> = changes.intervals.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["sys_interval_s: 10 -> 0", "drain_timeout_s: 0 -> 30"]);
    assert!(changes.needs_restart.is_empty());
    let running = old.reloaded(&new);
    assert_eq!(running.sys_interval(), None);
    assert_eq!(running.drain_timeout(), Duration::from_secs(30));
    assert!(running.changes(&new).is_empty());
}

#[test]
fn a_listener_may_limit_its_connections_and_their_rate() {
    let config = parse("[[listener]]\nmax_connections = 10\nmax_connection_rate = 500\n").unwrap();
    let listener = &config.listeners()[0];
    assert_eq!(listener.max_connections().map(NonZeroU32::get), Some(10));
    assert_eq!(listener.max_connection_rate().map(NonZeroU32::get), Some(500));
    let default = Config::default();
    let unlimited = &default.listeners()[0];
    assert_eq!((unlimited.max_connections(), unlimited.max_connection_rate()), (None, None));
    assert_eq!(
        error("[[listener]]\nmax_connection_rate = -1\n"),
        "config error: listener[0].max_connection_rate = -1: must be between 0 and 4294967295"
    );
}
