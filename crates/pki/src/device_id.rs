//! Which device ids the hub accepts: Azure IoT Hub's rule (1 to 128 ASCII characters from a fixed
//! set), with a refusal that shows the id safely.
//!
//! Why a module of its own: every device operation and every CONNECT checks an id with this one
//! rule, and it has nothing to do with certificates.

/// Why a device id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device id '{shown}' is invalid: expected 1 to 128 ASCII letters, digits or any of - . + % _ # * ? ! ( ) , = @ $ ' ({problem})")]
pub struct DeviceIdError {
    pub shown: String,
    pub problem: String,
}

/// Validates a device id as Azure IoT Hub allows them.
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    let problem = if id.is_empty() {
        "it is empty".to_string()
    } else if id.len() > 128 {
        format!("it has {} characters", id.chars().count())
    } else if let Some(c) = id.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '+'
                    | '%'
                    | '_'
                    | '#'
                    | '*'
                    | '?'
                    | '!'
                    | '('
                    | ')'
                    | ','
                    | '='
                    | '@'
                    | '$'
                    | '\''
            ))
    }) {
        format!("it contains {c:?}")
    } else {
        return Ok(());
    };
    // Built only for a refusal: every connect validates its ID, and most are valid.
    let shown = id
        .chars()
        .take(140)
        .collect::<String>()
        .escape_debug()
        .to_string();
    Err(DeviceIdError { shown, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in [
            "sensor-1",
            "a",
            &"x".repeat(128),
            "-.+%_#*?!(),=@$'",
            "UPPER.lower",
        ] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"x".repeat(129), "a/b", "bad id", "é", "tab\t", "nul\0"] {
            let e = validate_device_id(bad).unwrap_err();
            assert!(e.to_string().contains("expected 1 to 128"), "{e}");
        }
    }
}
