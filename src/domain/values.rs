//! Validated input types and the closed vocabularies of the domain. Input is parsed into these at
//! the edge (`Email::parse`, `Percent::parse`, …); past the edge, data is trusted. Each parse
//! failure names the field it came from, so the API can answer 422 with `fields`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Declares a closed set of lowercase words stored as TEXT.
macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Reads a stored value; the database CHECK constraints make a miss a bug, not input.
            pub fn from_db(text: &str) -> Result<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!(
                        "unknown {} in database: {text:?}", stringify!($name))))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(Role { Admin = "admin", Operator = "operator", User = "user" });
vocabulary!(StationStatus { Online = "online", Offline = "offline", Maintenance = "maintenance" });
vocabulary!(BatteryStatus {
    Available = "available",
    Booked = "booked",
    Collected = "collected",
    Charging = "charging",
    Retired = "retired",
});
vocabulary!(BookingStatus {
    Confirmed = "confirmed",
    Ready = "ready",
    Collected = "collected",
    Cancelled = "cancelled",
    Expired = "expired",
});
vocabulary!(Level { Info = "info", Success = "success", Warning = "warning", Error = "error" });

impl StationStatus {
    /// The `message` of seed 001's `station_status`.
    pub fn announcement(self) -> &'static str {
        match self {
            StationStatus::Online => "Station is now operational",
            StationStatus::Offline => "Station is offline",
            StationStatus::Maintenance => "Station is under maintenance",
        }
    }
}

impl BookingStatus {
    /// A live booking holds its battery.
    pub fn is_live(self) -> bool {
        matches!(self, BookingStatus::Confirmed | BookingStatus::Ready)
    }
}

/// Trims and bounds a free-text field.
fn text(field: &str, raw: &str, max_chars: usize) -> Result<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Error::field(field, "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(Error::field(field, format!("must be at most {max_chars} characters")));
    }
    if trimmed.chars().any(|c| c.is_control()) {
        return Err(Error::field(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Emails are compared case-insensitively, so they are stored lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        if valid {
            Ok(Email(email))
        } else {
            Err(Error::field("email", "must be an email address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed. The upper bound keeps a request from making the hasher do unbounded work.
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(raw: String) -> Result<Password> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(Error::field(
                "password",
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(Error::field(
                "password",
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Password(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

pub struct DisplayName;
impl DisplayName {
    pub fn parse(raw: &str) -> Result<String> {
        text("display_name", raw, 100)
    }
}

pub struct StationName;
impl StationName {
    pub fn parse(raw: &str) -> Result<String> {
        text("name", raw, 200)
    }
}

pub struct Address;
impl Address {
    pub fn parse(raw: &str) -> Result<String> {
        text("address", raw, 500)
    }
}

pub struct BatteryModel;
impl BatteryModel {
    pub fn parse(raw: &str) -> Result<String> {
        text("model", raw, 200)
    }
}

pub struct Title;
impl Title {
    pub fn parse(raw: &str) -> Result<String> {
        text("title", raw, 200)
    }
}

pub struct MessageText;
impl MessageText {
    pub fn parse(raw: &str) -> Result<String> {
        text("message", raw, 2000)
    }
}

/// Battery serials are identifiers printed on the pack: no spaces, bounded length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serial(String);

impl Serial {
    pub fn parse(raw: &str) -> Result<Serial> {
        let serial = text("serial", raw, 64)?;
        if serial.chars().any(char::is_whitespace) {
            return Err(Error::field("serial", "must not contain spaces"));
        }
        Ok(Serial(serial))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// State of charge or health, 0–100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(i32);

impl Percent {
    pub fn parse(field: &str, raw: i64) -> Result<Percent> {
        if (0..=100).contains(&raw) {
            Ok(Percent(raw as i32))
        } else {
            Err(Error::field(field, "must be between 0 and 100"))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(Email::parse(" Bob@Example.COM ").unwrap().as_str(), "bob@example.com");
        for bad in ["", "bob", "@x", "bob@", "a b@c", "a@b@c", "a\0@b.c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_have_bounds() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("long enough".into()).is_ok());
        assert!(Password::parse("x".repeat(2000)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("long enough".into()).unwrap()),
            "Password(..)"
        );
    }

    #[test]
    fn percent_is_bounded() {
        assert!(Percent::parse("soc", -1).is_err());
        assert!(Percent::parse("soc", 101).is_err());
        assert_eq!(Percent::parse("soc", 100).unwrap().get(), 100);
    }

    #[test]
    fn serials_have_no_spaces() {
        assert!(Serial::parse("BAT 1").is_err());
        assert!(Serial::parse("  ").is_err());
        assert_eq!(Serial::parse(" BAT-1 ").unwrap().as_str(), "BAT-1");
    }

    #[test]
    fn vocabularies_round_trip() {
        for s in StationStatus::ALL {
            assert_eq!(StationStatus::from_db(s.as_str()).unwrap(), *s);
        }
        assert!(Role::from_db("root").is_err());
    }
}
