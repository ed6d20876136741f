//! Feedback on cloud-to-device messages through the service layer: each ack hears the outcomes it
//! asked for (completed, expired, also for a device that never connects), receive locks a batch
//! under a token, complete and abandon settle it, and the queue's limits and rights hold.

mod common;

use common::*;
use iothub_hub::{C2dAck, C2dSend, FeedbackStatus, HubConfig, HubError, PutDevice};

fn device(env: &Env, id: &str) {
    let put = PutDevice {
        status: Some("enabled".into()),
        auth_type: Some("certificateAuthority".into()),
        ..Default::default()
    };
    env.hub.put_device(&sys(), id, &put, None).unwrap();
}

fn send(env: &Env, device: &str, message_id: &str, ack: C2dAck, ttl: i64) -> i64 {
    let msg = C2dSend {
        body: b"open".to_vec(),
        message_id: Some(message_id.into()),
        ttl_secs: Some(ttl),
        ack,
        ..Default::default()
    };
    env.hub.send_c2d(&sys(), device, &msg).unwrap().id
}

/// The message ids and outcomes of the next batch, and its lock token.
fn receive(env: &Env) -> Option<(String, Vec<(String, FeedbackStatus)>)> {
    env.hub.receive_feedback(&sys()).unwrap().map(|b| {
        (
            b.lock_token,
            b.records
                .into_iter()
                .map(|r| (r.original_message_id, r.status))
                .collect(),
        )
    })
}

fn ids(list: &[(String, FeedbackStatus)]) -> Vec<&str> {
    list.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn each_ack_hears_what_it_asked_for_once() {
    let env = Env::new();
    device(&env, "valve");
    let mut delivered = Vec::new();
    for (id, ack) in [
        ("none", C2dAck::None),
        ("positive", C2dAck::Positive),
        ("negative", C2dAck::Negative),
        ("full", C2dAck::Full),
    ] {
        delivered.push(send(&env, "valve", id, ack, 60));
    }
    // The device sees the ack among the system properties.
    let seen = env.hub.c2d_deliveries("valve").unwrap();
    assert_eq!(
        seen[3].system,
        [("iothub-ack".to_string(), Some("full".to_string()))]
    );
    assert!(seen[0].system.is_empty());
    for id in &delivered {
        env.hub.c2d_delivered(*id).unwrap();
        env.hub.c2d_delivered(*id).unwrap();
    }
    let (token, batch) = receive(&env).unwrap();
    assert_eq!(ids(&batch), ["positive", "full"]);
    assert!(batch.iter().all(|(_, s)| *s == FeedbackStatus::Success));
    env.hub.complete_feedback(&sys(), &token).unwrap();
    assert!(receive(&env).is_none());

    // Expired, for a device that never connects again: the sweep finds it.
    for (id, ack) in [
        ("e-none", C2dAck::None),
        ("e-positive", C2dAck::Positive),
        ("e-negative", C2dAck::Negative),
        ("e-full", C2dAck::Full),
    ] {
        send(&env, "valve", id, ack, 30);
    }
    assert_eq!(env.hub.expire_c2d_everywhere().unwrap(), 0);
    env.clock.advance(31);
    assert_eq!(env.hub.expire_c2d_everywhere().unwrap(), 4);
    let (_, batch) = receive(&env).unwrap();
    assert_eq!(ids(&batch), ["e-negative", "e-full"]);
    assert!(batch.iter().all(|(_, s)| *s == FeedbackStatus::Expired));
    let view = env.hub.receive_feedback(&sys()).unwrap();
    assert!(view.is_none(), "locked records are not handed out twice");
}

#[test]
fn a_batch_is_locked_abandoned_or_lost_with_its_lock() {
    let env = Env::with(HubConfig {
        feedback_lock_secs: 10,
        feedback_batch: 2,
        feedback_max_deliveries: 2,
        ..HubConfig::default()
    });
    device(&env, "valve");
    for i in 0..3 {
        let id = send(&env, "valve", &format!("m{i}"), C2dAck::Positive, 60);
        env.hub.c2d_delivered(id).unwrap();
    }
    let first = env.hub.receive_feedback(&sys()).unwrap().unwrap();
    assert_eq!(first.records.len(), 2, "at most --c2d-feedback-batch");
    assert_eq!(
        (first.locked_until, first.delivery_count),
        (env.now() + 10, 1)
    );
    let (second, rest) = receive(&env).unwrap();
    assert_eq!(ids(&rest), ["m2"]);
    env.hub.abandon_feedback(&sys(), &second).unwrap();
    // Settled once: a second settle of the same token is refused by name.
    let again = env.hub.abandon_feedback(&sys(), &second).unwrap_err();
    assert!(matches!(again, HubError::FeedbackLockLost(_)), "{again:?}");
    assert_eq!(again.code().number, 412003);
    // The lock runs out: the token settles nothing, the records are received again.
    env.clock.advance(11);
    let lost = env
        .hub
        .complete_feedback(&sys(), &first.lock_token)
        .unwrap_err();
    assert!(lost.to_string().contains("lock ran out"), "{lost}");
    let third = env.hub.receive_feedback(&sys()).unwrap().unwrap();
    assert_eq!(third.delivery_count, 2);
    env.hub.abandon_feedback(&sys(), &third.lock_token).unwrap();
    // m0 and m1 were taken twice (the limit): dropped; m2 once so far.
    let (_, last) = receive(&env).unwrap();
    assert_eq!(ids(&last), ["m2"]);
    // A token of another shape never reaches the store.
    for bad in ["", "x", "../../etc", &"f".repeat(400)] {
        let e = env.hub.complete_feedback(&sys(), bad).unwrap_err();
        assert!(matches!(e, HubError::FeedbackLockLost(_)), "{e:?}");
    }
}

#[test]
fn a_released_batch_comes_back_uncounted() {
    let env = Env::with(HubConfig {
        feedback_max_deliveries: 1,
        ..HubConfig::default()
    });
    device(&env, "valve");
    let id = send(&env, "valve", "m", C2dAck::Positive, 60);
    env.hub.c2d_delivered(id).unwrap();
    // A transport that could not deliver gives it back as often as it must.
    for _ in 0..3 {
        let batch = env.hub.receive_feedback(&sys()).unwrap().unwrap();
        assert_eq!(batch.delivery_count, 1);
        env.hub.release_feedback(&sys(), &batch.lock_token).unwrap();
    }
    let batch = env.hub.receive_feedback(&sys()).unwrap().unwrap();
    assert_eq!(batch.azure_json()[0]["originalMessageId"], "m");
    assert_eq!(batch.azure_json()[0]["statusCode"], "Success");
    env.hub.abandon_feedback(&sys(), &batch.lock_token).unwrap();
    // Delivered once (the limit) and abandoned: dropped.
    assert!(receive(&env).is_none());
}

#[test]
fn feedback_past_its_time_to_live_is_dropped() {
    let env = Env::with(HubConfig {
        feedback_ttl_secs: 100,
        ..HubConfig::default()
    });
    device(&env, "valve");
    let id = send(&env, "valve", "old", C2dAck::Full, 60);
    env.hub.c2d_delivered(id).unwrap();
    env.clock.advance(101);
    assert!(receive(&env).is_none());
}

#[test]
fn feedback_needs_service_connect() {
    let env = Env::new();
    let reader = principal_of(&env, "registryRead");
    for refused in [
        env.hub.receive_feedback(&reader).map(|_| ()),
        env.hub.complete_feedback(&reader, "t"),
        env.hub.abandon_feedback(&reader, "t"),
    ] {
        assert!(
            matches!(refused, Err(HubError::Forbidden { right, .. }) if right == "ServiceConnect"),
            "{refused:?}"
        );
    }
}

#[test]
fn an_unknown_ack_is_refused_with_the_names_it_may_take() {
    let e = iothub_hub::feedback::parse_ack("always").unwrap_err();
    assert_eq!(e.code().number, 400004, "{e}");
    assert!(e.to_string().contains("none, positive, negative, full"));
}
