//! The examples of `docs/azure-wire.md#mqtt-topics`, and every refusal of the topic policy.

use super::*;

fn props(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
        .collect()
}

const C2D_VERIFIED: &str = "%24.mid=abc&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.ct=application%2Fjson&iothub-ack=full&color=red%2Fblue&empty=&nullp";
const TELEMETRY_OBSERVED: &str = "devices/dev1/messages/events/%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&a%20b=x%26y&alert=hot%2Fcold";

#[test]
fn parses_the_verified_c2d_bag() {
    let bag = parse_property_bag(C2D_VERIFIED).unwrap();
    assert_eq!(
        bag.system,
        props(&[
            ("$.mid", Some("abc")),
            ("$.to", Some("/devices/dev1/messages/deviceBound")),
            ("$.ct", Some("application/json")),
        ])
    );
    assert_eq!(
        bag.custom,
        props(&[
            ("iothub-ack", Some("full")),
            ("color", Some("red/blue")),
            ("empty", Some("")),
            ("nullp", None),
        ])
    );
    // Re-encoded in our order: system properties by rank, custom ones sorted by key.
    assert_eq!(
        encode_property_bag(&bag.system, &bag.custom),
        "%24.mid=abc&%24.ct=application%2Fjson&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&color=red%2Fblue&empty=&iothub-ack=full&nullp"
    );
}

#[test]
fn parses_the_observed_telemetry_topic() {
    let parsed = device_may_publish("dev1", TELEMETRY_OBSERVED).unwrap();
    let DeviceTopic::Telemetry {
        device_id,
        module_id,
        bag,
    } = parsed
    else {
        panic!("not telemetry: {parsed:?}");
    };
    assert_eq!((device_id, module_id), ("dev1", None));
    let props_bag = parse_property_bag(bag).unwrap();
    assert_eq!(
        props_bag.system,
        props(&[
            ("$.mid", Some("m1")),
            ("$.ct", Some("application/json")),
            ("$.ce", Some("utf-8")),
        ])
    );
    assert_eq!(
        props_bag.custom,
        props(&[("a b", Some("x&y")), ("alert", Some("hot/cold"))])
    );
    // Our encoder reproduces what the SDK sent, byte for byte.
    assert_eq!(
        encode_property_bag(&props_bag.system, &props_bag.custom),
        bag
    );
}

#[test]
fn quote_matches_python() {
    let custom = props(&[("k", Some("a/b c$d&e=f~g_h.i-j%+#é"))]);
    assert_eq!(
        encode_property_bag(&[], &custom),
        "k=a%2Fb%20c%24d%26e%3Df~g_h.i-j%25%2B%23%C3%A9"
    );
    assert_eq!(encode_property_bag(&[], &[]), "");
}

#[test]
fn system_order_then_others_in_given_order() {
    let system = props(&[
        ("$.to", Some("t")),
        ("$.on", Some("o")),
        ("$.exp", Some("e")),
        ("$.ifid", None),
        ("$.mid", Some("m")),
        ("$.ce", Some("c")),
        ("$.uid", Some("u")),
        ("$.ct", Some("t")),
        ("$.cid", Some("c")),
    ]);
    assert_eq!(
        encode_property_bag(&system, &props(&[("z", None), ("a", Some(""))])),
        "%24.mid=m&%24.cid=c&%24.uid=u&%24.ct=t&%24.ce=c&%24.exp=e&%24.to=t&%24.on=o&%24.ifid&a=&z"
    );
}

#[test]
fn bag_edge_cases() {
    assert_eq!(parse_property_bag("").unwrap(), PropertyBag::default());
    let bag = parse_property_bag("a=1&&b=x=y&").unwrap();
    assert_eq!(bag.custom, props(&[("a", Some("1")), ("b", Some("x=y"))]));
    // Literal '$' works as well as '%24'; '+' is not a space (this is not form encoding).
    let bag = parse_property_bag("$.ct=text&a+b=c+d").unwrap();
    assert_eq!(bag.system, props(&[("$.ct", Some("text"))]));
    assert_eq!(bag.custom, props(&[("a+b", Some("c+d"))]));
    // An invalid escape stays as it is, like Python's unquote.
    let bag = parse_property_bag("a=%zz").unwrap();
    assert_eq!(bag.custom, props(&[("a", Some("%zz"))]));
}

#[test]
fn bag_errors() {
    assert_eq!(
        parse_property_bag("a=1&%61=2"),
        Err(TopicError::DuplicateProperty { key: "a".into() })
    );
    assert_eq!(
        parse_property_bag("a&a="),
        Err(TopicError::DuplicateProperty { key: "a".into() })
    );
    assert_eq!(
        parse_property_bag("=x"),
        Err(TopicError::EmptyPropertyName { entry: "=x".into() })
    );
    assert_eq!(
        parse_property_bag("a=%FF"),
        Err(TopicError::PropertyNotUtf8 { text: "%FF".into() })
    );
    let long = format!("a={}", "x".repeat(8 * 1024));
    assert_eq!(
        parse_property_bag(&long),
        Err(TopicError::BagTooLong {
            len: 8 * 1024 + 2,
            max: 8 * 1024
        })
    );
    let many: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    assert_eq!(
        parse_property_bag(&many.join("&")),
        Err(TopicError::TooManyProperties { count: 65, max: 64 })
    );
    assert!(parse_property_bag(&many[..64].join("&")).is_ok());
    let limits = BagLimits {
        max_properties: 2,
        max_bag_bytes: 10,
    };
    assert!(matches!(
        parse_property_bag_with("a&b&c", &limits),
        Err(TopicError::TooManyProperties { count: 3, max: 2 })
    ));
    assert!(matches!(
        parse_property_bag_with("abcdefghijk", &limits),
        Err(TopicError::BagTooLong { len: 11, max: 10 })
    ));
}

#[test]
fn c2d_topics() {
    assert_eq!(
        c2d_topic("dev1", "%24.mid=abc"),
        "devices/dev1/messages/devicebound/%24.mid=abc"
    );
    assert_eq!(c2d_topic("dev1", ""), "devices/dev1/messages/devicebound/");
}

#[test]
fn c2d_delivery_topic_leads_with_mid_and_to() {
    // Stored system properties take their rank among $.mid and $.to; application ones follow
    // sorted; a property without a value is written as its bare name.
    assert_eq!(
        c2d_delivery_topic(
            "dev 1",
            "m/1",
            &props(&[("$.ct", Some("application/json")), ("$.cid", Some("c1"))]),
            &props(&[("z", Some("a&b")), ("a", None)]),
        ),
        "devices/dev 1/messages/devicebound/%24.mid=m%2F1&%24.cid=c1&%24.ct=application%2Fjson\
         &%24.to=%2Fdevices%2Fdev%201%2Fmessages%2FdeviceBound&a&z=a%26b"
    );
    assert_eq!(
        c2d_delivery_topic("d", "m", &[], &[]),
        "devices/d/messages/devicebound/%24.mid=m&%24.to=%2Fdevices%2Fd%2Fmessages%2FdeviceBound"
    );
}

#[test]
fn deliveries_named_by_filters() {
    for (filter, delivery) in [
        (
            "devices/d/messages/devicebound/#",
            Some(Delivery::CloudToDevice),
        ),
        ("devices/other/anything", Some(Delivery::CloudToDevice)),
        (
            "$iothub/twin/PATCH/properties/desired/#",
            Some(Delivery::DesiredProperties),
        ),
        ("$iothub/methods/POST/#", Some(Delivery::Methods)),
        ("$iothub/twin/res/#", None),
        ("#", None),
    ] {
        assert_eq!(Delivery::of_filter(filter), delivery, "{filter}");
    }
}

#[test]
fn topics_published_to_devices() {
    assert_eq!(
        twin_response_topic(200, "1"),
        "$iothub/twin/res/200/?$rid=1"
    );
    // The $rid is echoed byte for byte, percent-encoding included.
    assert_eq!(
        twin_response_topic(400, "a%20b"),
        "$iothub/twin/res/400/?$rid=a%20b"
    );
    assert_eq!(
        twin_patched_topic("7", 12),
        "$iothub/twin/res/204/?$rid=7&$version=12"
    );
    assert_eq!(
        desired_patch_topic(3),
        "$iothub/twin/PATCH/properties/desired/?$version=3"
    );
    assert_eq!(
        method_request_topic("reboot", 42),
        "$iothub/methods/POST/reboot/?$rid=42"
    );
    // What the hub publishes is what a device may subscribe to.
    for topic in [
        twin_response_topic(200, "1"),
        desired_patch_topic(3),
        method_request_topic("reboot", 42),
    ] {
        let filter = format!("{}#", &topic[..=topic.find("/?").unwrap()]);
        assert!(device_may_subscribe("d", &filter).is_ok(), "{filter}");
    }
    assert!(filter_matches(
        "devices/d/messages/devicebound/#",
        &c2d_delivery_topic("d", "m", &[], &[])
    ));
}

#[test]
fn device_topics() {
    assert_eq!(
        DeviceTopic::parse("devices/dev1/messages/events"),
        Ok(DeviceTopic::Telemetry {
            device_id: "dev1",
            module_id: None,
            bag: ""
        })
    );
    assert_eq!(
        DeviceTopic::parse("devices/dev1/messages/events/"),
        Ok(DeviceTopic::Telemetry {
            device_id: "dev1",
            module_id: None,
            bag: ""
        })
    );
    assert_eq!(
        DeviceTopic::parse("devices/dev1/modules/m1/messages/events/a=1"),
        Ok(DeviceTopic::Telemetry {
            device_id: "dev1",
            module_id: Some("m1"),
            bag: "a=1"
        })
    );
    assert_eq!(
        DeviceTopic::parse("$iothub/twin/GET/?$rid=7f3c"),
        Ok(DeviceTopic::TwinGet { rid: "7f3c" })
    );
    assert_eq!(
        DeviceTopic::parse("$iothub/twin/PATCH/properties/reported/?$rid=9&$version=3"),
        Ok(DeviceTopic::TwinPatchReported { rid: "9" })
    );
    assert_eq!(
        DeviceTopic::parse("$iothub/methods/res/200/?$rid=42"),
        Ok(DeviceTopic::MethodResponse {
            status: 200,
            rid: "42"
        })
    );
    assert_eq!(
        DeviceTopic::parse("$iothub/methods/res/-1/?a=b&$rid=x%2Fy"),
        Ok(DeviceTopic::MethodResponse {
            status: -1,
            rid: "x%2Fy"
        })
    );
    for other in [
        "devices/dev1/messages/eventsX",
        "devices/dev1/messages/devicebound/",
        "devices/dev1",
        "devices/dev1/modules/m1",
        "$iothub/twin/res/200/?$rid=1",
        "a/b",
        "",
    ] {
        assert_eq!(DeviceTopic::parse(other), Ok(DeviceTopic::Other), "{other}");
    }
    for (topic, reason) in [
        ("devices//messages/events/", "the device id is empty"),
        (
            "devices/d/modules//messages/events/",
            "the module id is empty",
        ),
        (
            "$iothub/twin/GET/",
            "expected ?$rid={request id} after the last '/'",
        ),
        ("$iothub/twin/GET/?$rid=", "the $rid is empty"),
        (
            "$iothub/twin/GET/?rid=1",
            "the $rid is missing: expected ?$rid={request id}",
        ),
        (
            "$iothub/methods/res/ok/?$rid=1",
            "the method status is not an integer",
        ),
        (
            "$iothub/methods/res/200",
            "expected $iothub/methods/res/{status}/?$rid={rid}",
        ),
    ] {
        assert_eq!(
            DeviceTopic::parse(topic),
            Err(TopicError::MalformedTopic {
                topic: topic.into(),
                reason
            })
        );
    }
}

#[test]
fn publish_policy() {
    let err = device_may_publish("sensor-1", "devices/sensor-2/messages/events/").unwrap_err();
    assert_eq!(
        err.to_string(),
        "device 'sensor-1' may not publish to 'devices/sensor-2/messages/events/': a device publishes only under its own id"
    );
    // Even an unknown topic under another id is refused for the id.
    assert!(matches!(
        device_may_publish("sensor-1", "devices/sensor-2/whatever"),
        Err(TopicError::PublishForeignDevice { .. })
    ));
    // Ids are compared exactly: no prefix, case or wildcard games.
    for topic in [
        "devices/sensor-10/messages/events/",
        "devices/Sensor-1/messages/events/",
        "devices/+/messages/events/",
        "devices/#",
        "devices/sensor-1x",
    ] {
        assert!(
            matches!(
                device_may_publish("sensor-1", topic),
                Err(TopicError::PublishForeignDevice { .. })
            ),
            "{topic}"
        );
    }
    let err = device_may_publish("sensor-1", "telemetry/sensor-1").unwrap_err();
    assert!(matches!(err, TopicError::PublishRefused { .. }));
    assert!(err.to_string().starts_with(
        "device 'sensor-1' may not publish to 'telemetry/sensor-1': not an IoT Hub device topic"
    ));
    for topic in [
        "devices/sensor-1/messages/devicebound/",
        "devices/sensor-1",
        "devices/sensor-1/",
    ] {
        assert!(
            matches!(
                device_may_publish("sensor-1", topic),
                Err(TopicError::PublishRefused { .. })
            ),
            "{topic}"
        );
    }
    assert!(matches!(
        device_may_publish("sensor-1", "$iothub/twin/GET/"),
        Err(TopicError::MalformedTopic { .. })
    ));
    assert_eq!(
        device_may_publish("sensor-1", "$iothub/twin/GET/?$rid=1"),
        Ok(DeviceTopic::TwinGet { rid: "1" })
    );
    // Ids with every character Azure allows, '+' and '#' literal.
    let id = "a-b.c+d%e_f#g*h?i!j(k)l,m=n@o$p'q";
    let topic = format!("devices/{id}/messages/events/x=1");
    assert_eq!(
        device_may_publish(id, &topic),
        Ok(DeviceTopic::Telemetry {
            device_id: id,
            module_id: None,
            bag: "x=1"
        })
    );
    assert_eq!(
        device_may_publish("", "devices//messages/events/"),
        Err(TopicError::InvalidDeviceId {
            device_id: String::new()
        })
    );
}

#[test]
fn subscribe_policy() {
    for filter in [
        "devices/dev1/messages/devicebound/#",
        "devices/dev1/messages/devicebound/",
        "devices/dev1/messages/devicebound/+",
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
        "$iothub/methods/POST/reboot/#",
    ] {
        assert_eq!(device_may_subscribe("dev1", filter), Ok(()), "{filter}");
    }
    let err = device_may_subscribe("dev1", "devices/dev2/messages/devicebound/#").unwrap_err();
    assert_eq!(
        err.to_string(),
        "device 'dev1' may not subscribe to 'devices/dev2/messages/devicebound/#': a device subscribes only under its own id, found 'dev2' where its id belongs"
    );
    assert!(matches!(
        device_may_subscribe("dev1", "devices/+/messages/devicebound/#"),
        Err(TopicError::SubscribeForeignDevice { found, .. }) if found == "+"
    ));
    assert!(matches!(
        device_may_subscribe("dev1", "devices/#"),
        Err(TopicError::SubscribeForeignDevice { found, .. }) if found == "#"
    ));
    let err = device_may_subscribe("dev1", "#").unwrap_err();
    assert!(err.to_string().starts_with(
        "device 'dev1' may not subscribe to '#': a wildcard may not stand for the namespace"
    ));
    for filter in [
        "+/dev1/messages/devicebound/#",
        "$iothub/#",
        "$iothub/twin/PATCH/properties/reported/#",
        "$iothub/methods/res/#",
        "devices/dev1/messages/events/#",
        "devices/dev1/messages/devicebound",
        "devices/dev1/#",
        "devices/dev1",
        "",
    ] {
        assert!(
            matches!(
                device_may_subscribe("dev1", filter),
                Err(TopicError::SubscribeRefused { .. })
            ),
            "{filter}"
        );
    }
    // A device whose id is literally '+' or 'a#b' subscribes under its literal id.
    assert_eq!(
        device_may_subscribe("+", "devices/+/messages/devicebound/#"),
        Ok(())
    );
    assert_eq!(
        device_may_subscribe("a#b", "devices/a#b/messages/devicebound/#"),
        Ok(())
    );
    assert!(matches!(
        device_may_subscribe("dev1/m1", "devices/dev1/messages/devicebound/#"),
        Err(TopicError::InvalidDeviceId { .. })
    ));
}

#[test]
fn filter_matching() {
    let yes = [
        ("a/b", "a/b"),
        ("a/+", "a/b"),
        ("a/+", "a/"),
        ("+/+", "/x"),
        ("a/#", "a"),
        ("a/#", "a/b/c"),
        ("#", "a/b"),
        ("#", "/"),
        ("+", "a"),
        ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1"),
        ("$iothub/+/res/#", "$iothub/twin/res/200"),
        (
            "devices/dev1/messages/devicebound/#",
            "devices/dev1/messages/devicebound/%24.mid=1",
        ),
        // '+' and '#' inside a level are literal.
        (
            "devices/a+b/messages/devicebound/#",
            "devices/a+b/messages/devicebound/x",
        ),
        ("a/#/c", "a/#/c"),
    ];
    for (filter, topic) in yes {
        assert!(
            filter_matches(filter, topic),
            "{filter} should match {topic}"
        );
    }
    let no = [
        ("a/b", "a/c"),
        ("a/+", "a/b/c"),
        ("a/+", "a"),
        ("a/b", "a/b/c"),
        ("a/b/c", "a/b"),
        ("#", "$iothub/twin/res/200"),
        ("+/twin/res/#", "$iothub/twin/res/200"),
        (
            "devices/a+b/messages/devicebound/#",
            "devices/axb/messages/devicebound/x",
        ),
        ("a/#/c", "a/b/c"),
        ("", "a"),
        ("a", ""),
    ];
    for (filter, topic) in no {
        assert!(
            !filter_matches(filter, topic),
            "{filter} should not match {topic}"
        );
    }
}
