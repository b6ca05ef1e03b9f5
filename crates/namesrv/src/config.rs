//! NameServer settings, read from RocketMQ's `namesrv.conf` keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::NamesrvError;

/// The NameServer's configuration. Field names follow `NamesrvConfig` /
/// `NettyServerConfig` so existing `namesrv.conf` files work unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct NamesrvConfig {
    /// `listenPort`: TCP port (9876). 0 picks an ephemeral port.
    pub listen_port: u16,
    /// `bindAddress`: interface to listen on.
    pub bind_address: String,
    /// `kvConfigPath`: where KV config (ORDER_TOPIC_CONFIG, …) is persisted.
    pub kv_config_path: PathBuf,
    /// `orderMessageEnable`: put `orderTopicConf` into routes.
    pub order_message_enable: bool,
    /// `returnOrderTopicConfigToBroker`: answer registrations with the
    /// ORDER_TOPIC_CONFIG table.
    pub return_order_topic_config_to_broker: bool,
    /// `scanNotActiveBrokerInterval` (ms): how often silent brokers are looked for.
    pub scan_not_active_broker_interval: Duration,
    /// `brokerChannelExpiredTime` (ms): a broker that has not registered for
    /// this long is dropped, unless its registration asked for another timeout.
    pub broker_channel_expired_time: Duration,
    /// `enableAllTopicList`: serve GET_ALL_TOPIC_LIST_FROM_NAMESERVER.
    pub enable_all_topic_list: bool,
    /// `enableTopicList`: serve GET_TOPICS_BY_CLUSTER and the other topic lists.
    pub enable_topic_list: bool,
    /// `deleteTopicWithBrokerRegistration`: drop a broker's topics that are
    /// missing from its full registration.
    pub delete_topic_with_broker_registration: bool,
    /// `serverChannelMaxIdleTimeSeconds`: idle connections are closed after this.
    pub server_channel_max_idle_time: Duration,
    /// `frameMaxLength` (bytes): frames above it close the connection.
    pub frame_max_length: usize,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        NamesrvConfig {
            listen_port: 9876,
            bind_address: "0.0.0.0".to_string(),
            kv_config_path: home.join("namesrv").join("kvConfig.json"),
            order_message_enable: false,
            return_order_topic_config_to_broker: true,
            scan_not_active_broker_interval: Duration::from_secs(5),
            broker_channel_expired_time: Duration::from_secs(120),
            enable_all_topic_list: true,
            enable_topic_list: true,
            delete_topic_with_broker_registration: false,
            server_channel_max_idle_time: Duration::from_secs(120),
            frame_max_length: 16 * 1024 * 1024,
        }
    }
}

impl NamesrvConfig {
    /// Applies `key=value` pairs (from a properties file or the command
    /// line). Unknown keys are returned so the caller can warn about them;
    /// a bad value is an error naming the key.
    pub fn apply(&mut self, props: &BTreeMap<String, String>) -> Result<Vec<String>, NamesrvError> {
        let mut unknown = Vec::new();
        for (key, value) in props {
            let v = value.trim();
            match key.as_str() {
                "listenPort" => self.listen_port = parse(key, v)?,
                "bindAddress" => self.bind_address = v.to_string(),
                "kvConfigPath" => self.kv_config_path = PathBuf::from(v),
                "orderMessageEnable" => self.order_message_enable = parse_bool(key, v)?,
                "returnOrderTopicConfigToBroker" => {
                    self.return_order_topic_config_to_broker = parse_bool(key, v)?
                }
                "scanNotActiveBrokerInterval" => {
                    self.scan_not_active_broker_interval = Duration::from_millis(parse(key, v)?)
                }
                "brokerChannelExpiredTime" => {
                    self.broker_channel_expired_time = Duration::from_millis(parse(key, v)?)
                }
                "enableAllTopicList" => self.enable_all_topic_list = parse_bool(key, v)?,
                "enableTopicList" => self.enable_topic_list = parse_bool(key, v)?,
                "deleteTopicWithBrokerRegistration" => {
                    self.delete_topic_with_broker_registration = parse_bool(key, v)?
                }
                "serverChannelMaxIdleTimeSeconds" => {
                    self.server_channel_max_idle_time = Duration::from_secs(parse(key, v)?)
                }
                "frameMaxLength" => self.frame_max_length = parse(key, v)?,
                _ => unknown.push(key.clone()),
            }
        }
        if self.scan_not_active_broker_interval.is_zero() {
            return Err(NamesrvError::Config {
                key: "scanNotActiveBrokerInterval".into(),
                reason: "must be greater than 0".into(),
            });
        }
        Ok(unknown)
    }

    /// The effective configuration as `key=value` pairs (for `-p`).
    pub fn to_properties(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("listenPort".into(), self.listen_port.to_string());
        m.insert("bindAddress".into(), self.bind_address.clone());
        m.insert(
            "kvConfigPath".into(),
            self.kv_config_path.display().to_string(),
        );
        m.insert(
            "orderMessageEnable".into(),
            self.order_message_enable.to_string(),
        );
        m.insert(
            "returnOrderTopicConfigToBroker".into(),
            self.return_order_topic_config_to_broker.to_string(),
        );
        m.insert(
            "scanNotActiveBrokerInterval".into(),
            self.scan_not_active_broker_interval.as_millis().to_string(),
        );
        m.insert(
            "brokerChannelExpiredTime".into(),
            self.broker_channel_expired_time.as_millis().to_string(),
        );
        m.insert(
            "enableAllTopicList".into(),
            self.enable_all_topic_list.to_string(),
        );
        m.insert("enableTopicList".into(), self.enable_topic_list.to_string());
        m.insert(
            "deleteTopicWithBrokerRegistration".into(),
            self.delete_topic_with_broker_registration.to_string(),
        );
        m.insert(
            "serverChannelMaxIdleTimeSeconds".into(),
            self.server_channel_max_idle_time.as_secs().to_string(),
        );
        m.insert("frameMaxLength".into(), self.frame_max_length.to_string());
        m
    }
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, NamesrvError>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| NamesrvError::Config {
        key: key.to_string(),
        reason: format!("'{v}': {e}"),
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool, NamesrvError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(NamesrvError::Config {
            key: key.to_string(),
            reason: format!("'{v}' is not a boolean (true/false)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_known_keys_and_reports_unknown_ones() {
        let mut c = NamesrvConfig::default();
        let props = apogee_protocol::java_properties::parse(
            "listenPort=19876\norderMessageEnable=true\nbrokerChannelExpiredTime=3000\nfoo=bar\n",
        );
        let unknown = c.apply(&props).unwrap();
        assert_eq!(c.listen_port, 19876);
        assert!(c.order_message_enable);
        assert_eq!(c.broker_channel_expired_time, Duration::from_secs(3));
        assert_eq!(unknown, vec!["foo".to_string()]);
    }

    #[test]
    fn bad_value_names_the_key() {
        let mut c = NamesrvConfig::default();
        let props = apogee_protocol::java_properties::parse("listenPort=abc\n");
        let err = c.apply(&props).unwrap_err().to_string();
        assert!(err.contains("listenPort"), "{err}");
        assert!(err.contains("abc"), "{err}");
    }

    #[test]
    fn round_trips_through_properties() {
        let c = NamesrvConfig {
            listen_port: 1234,
            ..Default::default()
        };
        let mut d = NamesrvConfig::default();
        d.apply(&c.to_properties()).unwrap();
        assert_eq!(c, d);
    }
}
