//! Shared access policies as operators write them: the four rights of Azure IoT Hub, a rights list
//! as the management API carries it ("RegistryRead, RegistryWrite"), policy names, and which key of
//! a policy an operation means. Pure parsing, fuzzed (`fuzz/fuzz_targets/policy_rights.rs`): the
//! text comes from anyone holding an owner token, the CLI or the management SDK.

/// A right a policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Right {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl Right {
    pub const ALL: [Right; 4] = [
        Right::RegistryRead,
        Right::RegistryWrite,
        Right::ServiceConnect,
        Right::DeviceConnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Right::RegistryRead => "RegistryRead",
            Right::RegistryWrite => "RegistryWrite",
            Right::ServiceConnect => "ServiceConnect",
            Right::DeviceConnect => "DeviceConnect",
        }
    }
}

/// The longest rights list read: the four names with separators fit in well under 100 bytes, so
/// anything longer is refused before it is split.
pub const MAX_RIGHTS_TEXT: usize = 256;

/// The longest policy name.
pub const MAX_POLICY_NAME: usize = 64;

/// Why a rights list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    #[error("the rights list is {0} bytes long; at most 256 are accepted")]
    TooLong(usize),
    #[error("the rights list is empty; expected a comma-separated list of RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect")]
    Empty,
    #[error("the rights list has an empty entry at position {0}; expected names separated by single commas, e.g. 'RegistryRead, ServiceConnect'")]
    EmptyEntry(usize),
    #[error("'{0}' is not a right; expected RegistryRead, RegistryWrite, ServiceConnect or DeviceConnect")]
    Unknown(String),
    #[error("the right {0} is listed twice")]
    Duplicate(&'static str),
}

/// Parses a comma-separated rights list ("RegistryRead, RegistryWrite"; spaces around names are
/// ignored, names compare without regard to case). Returns the rights in canonical order.
pub fn parse_rights(text: &str) -> Result<Vec<Right>, RightsError> {
    if text.len() > MAX_RIGHTS_TEXT {
        return Err(RightsError::TooLong(text.len()));
    }
    if text.trim().is_empty() {
        return Err(RightsError::Empty);
    }
    let mut rights = Vec::new();
    for (i, entry) in text.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(RightsError::EmptyEntry(i + 1));
        }
        let right = Right::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(entry))
            .ok_or_else(|| RightsError::Unknown(shown(entry)))?;
        if rights.contains(&right) {
            return Err(RightsError::Duplicate(right.name()));
        }
        rights.push(right);
    }
    rights.sort_unstable();
    Ok(rights)
}

/// Renders rights as Azure's management API does: "RegistryRead, RegistryWrite".
pub fn format_rights<S: AsRef<str>>(rights: &[S]) -> String {
    rights
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a policy name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy name '{shown}' is not valid: {problem}; expected 1 to 64 characters from A-Z, a-z, 0-9, '-', '.' and '_'")]
pub struct PolicyNameError {
    pub shown: String,
    pub problem: String,
}

/// Validates a policy name against `^[A-Za-z0-9-._]{1,64}$` (the alphabet of the built-in names
/// and of certificate names; nothing in it needs escaping in a URL path or a connection string).
pub fn validate_policy_name(name: &str) -> Result<(), PolicyNameError> {
    let problem = if name.is_empty() {
        "it is empty".to_string()
    } else if name.chars().count() > MAX_POLICY_NAME {
        format!("it has {} characters", name.chars().count())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        format!("it contains {c:?}")
    } else {
        return Ok(());
    };
    Err(PolicyNameError {
        shown: shown(name),
        problem,
    })
}

/// One of a policy's two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    Primary,
    Secondary,
}

impl KeySlot {
    pub fn name(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }

    /// Parses "primary" or "secondary" (Azure's CLI also says so), without regard to case.
    pub fn parse(text: &str) -> Result<KeySlot, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "primary" => Ok(KeySlot::Primary),
            "secondary" => Ok(KeySlot::Secondary),
            _ => Err(format!(
                "'{}' names no key; expected 'primary' or 'secondary'",
                shown(text)
            )),
        }
    }
}

/// Text from a request, cut and escaped for an error message (no control characters echoed).
fn shown(text: &str) -> String {
    text.chars()
        .take(MAX_POLICY_NAME)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_lists_parse_in_azure_spelling() {
        assert_eq!(
            parse_rights("RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect").unwrap(),
            Right::ALL
        );
        assert_eq!(
            parse_rights("serviceconnect,RegistryRead").unwrap(),
            [Right::RegistryRead, Right::ServiceConnect]
        );
        assert_eq!(
            format_rights(&["RegistryRead", "ServiceConnect"]),
            "RegistryRead, ServiceConnect"
        );
    }

    #[test]
    fn bad_rights_lists_say_what_is_wrong() {
        assert_eq!(parse_rights(" "), Err(RightsError::Empty));
        assert_eq!(
            parse_rights("RegistryRead,,DeviceConnect"),
            Err(RightsError::EmptyEntry(2))
        );
        assert_eq!(
            parse_rights("RegistryRead,Owner"),
            Err(RightsError::Unknown("Owner".into()))
        );
        assert_eq!(
            parse_rights("RegistryRead,registryread"),
            Err(RightsError::Duplicate("RegistryRead"))
        );
        assert_eq!(
            parse_rights(&"a".repeat(300)),
            Err(RightsError::TooLong(300))
        );
        let e = parse_rights("Registry\u{0}Read").unwrap_err().to_string();
        assert!(e.contains("Registry\\0Read"), "{e}");
    }

    #[test]
    fn policy_names() {
        for ok in ["iothubowner", "a", "ops-read.1_x", &"n".repeat(64)] {
            assert!(validate_policy_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "with space", "semi;colon", "ü", "a/b", &"n".repeat(65)] {
            assert!(validate_policy_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_slots() {
        assert_eq!(KeySlot::parse("Primary"), Ok(KeySlot::Primary));
        assert_eq!(KeySlot::parse("secondary"), Ok(KeySlot::Secondary));
        assert!(KeySlot::parse("tertiary").unwrap_err().contains("tertiary"));
    }
}
