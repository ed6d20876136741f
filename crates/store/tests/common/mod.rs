//! Records the store suites share: an audit entry, a device, a telemetry message.
#![allow(dead_code)]

use iothub_store::*;

pub fn audit(action: &str) -> NewAudit {
    NewAudit {
        time: 1,
        actor: "t".into(),
        action: action.into(),
        target: "certificate/a".into(),
        success: true,
        code: None,
        detail: String::new(),
    }
}

pub fn device(id: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: id.into(),
        generation_id: "g".into(),
        etag: 0,
        status: DeviceStatus::Enabled,
        status_reason: None,
        status_updated: 1,
        auth_type: AuthType::CertificateAuthority,
        primary_thumbprint: None,
        secondary_thumbprint: None,
        primary_key: Some("k".into()),
        secondary_key: None,
        created: 1,
        updated: 1,
    }
}

pub fn message(partition: u32, device: &str, body: &str) -> NewMessage {
    NewMessage {
        partition,
        device_id: device.into(),
        module_id: None,
        enqueued: 100,
        system_properties: "{}".into(),
        properties: "{}".into(),
        body: body.as_bytes().to_vec(),
    }
}
