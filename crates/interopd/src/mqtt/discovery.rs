//! Home Assistant MQTT discovery: the retained config messages that make interopd appear as
//! one device with a notify entity per contact, an event entity for inbound messages, a
//! link-connectivity binary sensor and an outbox-depth sensor (docs/mqtt.md). Each config is
//! published under `<discovery_prefix>/<component>/<node_id>/<object_id>/config` with the
//! keys Home Assistant documents for that platform; a removed contact's topic gets an empty
//! retained message, which deletes the entity. Pure: topics and JSON only.

use crate::config::MqttConfig;

/// The payload the availability topic holds while we are connected.
pub const AVAILABLE: &str = "online";
/// The payload of our last will on the availability topic.
pub const NOT_AVAILABLE: &str = "offline";
/// The payload Home Assistant publishes on `<discovery_prefix>/status` when it starts (its
/// birth message): discovery is published again then.
pub const HA_BIRTH: &str = "online";

/// The bridge's own topics, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub base: String,
    pub availability: String,
    pub inbox: String,
    pub status: String,
    pub link: String,
    pub outbox: String,
    pub send: String,
    pub send_result: String,
    /// `<base>/notify/`: a contact's command topic is this and its digits.
    pub notify_prefix: String,
    /// `<discovery_prefix>/status`, where Home Assistant announces itself.
    pub ha_status: String,
}

impl Topics {
    pub fn new(cfg: &MqttConfig) -> Topics {
        let base = cfg.base_topic();
        Topics {
            availability: format!("{base}/availability"),
            inbox: format!("{base}/inbox"),
            status: format!("{base}/status"),
            link: format!("{base}/link"),
            outbox: format!("{base}/outbox"),
            send: format!("{base}/send"),
            send_result: format!("{base}/send/result"),
            notify_prefix: format!("{base}/notify/"),
            ha_status: format!("{}/status", cfg.discovery_prefix),
            base,
        }
    }

    /// The subscriptions: the two command topics and Home Assistant's status.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            self.send.clone(),
            format!("{}+", self.notify_prefix),
            self.ha_status.clone(),
        ]
    }
}

/// The device block every entity shares: Home Assistant groups the entities under it.
fn device(cfg: &MqttConfig) -> serde_json::Value {
    serde_json::json!({
        "identifiers": [format!("interopd_{}", cfg.node_id)],
        "name": format!("interopd {}", cfg.node_id),
        "manufacturer": "interopd",
        "model": "interopd",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The keys every entity's config carries: its ids, the device and availability.
fn entity(cfg: &MqttConfig, topics: &Topics, object: &str, name: &str) -> serde_json::Value {
    let id = format!("{}_{object}", cfg.node_id);
    serde_json::json!({
        "name": name,
        "unique_id": id,
        "object_id": id,
        "device": device(cfg),
        "availability_topic": topics.availability,
        "payload_available": AVAILABLE,
        "payload_not_available": NOT_AVAILABLE,
    })
}

fn with(mut v: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

fn config_topic(cfg: &MqttConfig, component: &str, object: &str) -> String {
    format!(
        "{}/{component}/{}/{object}/config",
        cfg.discovery_prefix, cfg.node_id
    )
}

/// The config topic of contact `digits`' notify entity.
pub fn notify_config_topic(cfg: &MqttConfig, digits: &str) -> String {
    config_topic(cfg, "notify", &format!("notify_{digits}"))
}

/// The retained config messages (topic, JSON) for the device's fixed entities and a notify
/// entity for each of `contacts` (digits).
pub fn configs(cfg: &MqttConfig, topics: &Topics, contacts: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let event = with(
        entity(cfg, topics, "message", "Message"),
        serde_json::json!({
            "state_topic": topics.inbox,
            "event_types": ["message"],
            // The inbox carries the API's message object; the event needs an event_type.
            // Keys are subscripted: `from` is a word of Jinja's own.
            "value_template": "{\"event_type\": \"message\", \"from\": {{ value_json['from'] | to_json }}, \"text\": {{ value_json['text'] | default('') | to_json }}, \"id\": {{ value_json['id'] | to_json }}, \"cursor\": {{ value_json['cursor'] | to_json }}}",
            "qos": 1,
            "icon": "mdi:message-text",
        }),
    );
    out.push((config_topic(cfg, "event", "message"), event.to_string()));
    let link = with(
        entity(cfg, topics, "link", "Link"),
        serde_json::json!({
            "state_topic": topics.link,
            "payload_on": "up",
            "payload_off": "down",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        }),
    );
    out.push((config_topic(cfg, "binary_sensor", "link"), link.to_string()));
    let outbox = with(
        entity(cfg, topics, "outbox", "Outbox"),
        serde_json::json!({
            "state_topic": topics.outbox,
            "unit_of_measurement": "messages",
            "state_class": "measurement",
            "icon": "mdi:email-fast-outline",
        }),
    );
    out.push((config_topic(cfg, "sensor", "outbox"), outbox.to_string()));
    for digits in contacts {
        let notify = with(
            entity(
                cfg,
                topics,
                &format!("notify_{digits}"),
                &format!("+{digits}"),
            ),
            serde_json::json!({
                "command_topic": format!("{}{digits}", topics.notify_prefix),
                "qos": 1,
                "icon": "mdi:message-arrow-right",
            }),
        );
        out.push((notify_config_topic(cfg, digits), notify.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MqttConfig {
        MqttConfig {
            url: "mqtt://127.0.0.1".into(),
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            ca_file: None,
            username: None,
            password_file: None,
            client_id: "interopd-n1".into(),
            topic_prefix: "interopd".into(),
            discovery_prefix: "homeassistant".into(),
            node_id: "n1".into(),
            contacts: None,
            keepalive_secs: 30,
        }
    }

    #[test]
    fn every_entity_has_ids_device_and_availability_and_its_platform_keys() {
        let c = cfg();
        let t = Topics::new(&c);
        let all = configs(&c, &t, &["15550100".to_string()]);
        let topics: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/event/n1/message/config",
                "homeassistant/binary_sensor/n1/link/config",
                "homeassistant/sensor/n1/outbox/config",
                "homeassistant/notify/n1/notify_15550100/config",
            ]
        );
        let mut ids = std::collections::BTreeSet::new();
        for (topic, json) in &all {
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!(
                ids.insert(v["unique_id"].as_str().unwrap().to_owned()),
                "{topic}"
            );
            assert_eq!(v["object_id"], v["unique_id"]);
            assert_eq!(v["availability_topic"], "interopd/n1/availability");
            assert_eq!(v["device"]["identifiers"][0], "interopd_n1");
            for k in ["name", "model", "sw_version"] {
                assert!(v["device"][k].is_string(), "{topic} device.{k}");
            }
        }
        let v = |i: usize| serde_json::from_str::<serde_json::Value>(&all[i].1).unwrap();
        assert_eq!(v(0)["event_types"], serde_json::json!(["message"]));
        assert_eq!(v(0)["state_topic"], "interopd/n1/inbox");
        assert_eq!(v(1)["device_class"], "connectivity");
        assert_eq!(
            (v(1)["payload_on"].as_str(), v(1)["payload_off"].as_str()),
            (Some("up"), Some("down"))
        );
        assert_eq!(v(2)["state_topic"], "interopd/n1/outbox");
        assert_eq!(v(3)["command_topic"], "interopd/n1/notify/15550100");
        assert_eq!(
            t.subscriptions(),
            [
                "interopd/n1/send",
                "interopd/n1/notify/+",
                "homeassistant/status"
            ]
        );
    }
}
